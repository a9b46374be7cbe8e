"""Delivery: everything between a result and the PACS, RIS, EHR or worklist that takes it.

The path of one delivery, module by module:

1. ``payloads``: a task's result becomes outbox items, as its mode allows (SR first, then the
   HL7, FHIR and webhook messages, then GSPS, SC and SEG); worklist rank changes too.
2. ``outbox``: the durable queue in the job store (pending, sending, delivered, dead), with
   exponential backoff between attempts within a retry window (``RetryPolicy``).
3. ``workers``: threads that take due items, stat first, and hand each as a ``Payload`` to its
   destination; ``probes`` watches destinations with a backlog and re-drives it when they
   answer again.
4. Destinations, one module per kind: ``dicom`` (C-STORE), ``stow`` (STOW-RS), ``http`` (FHIR
   and webhooks), ``mllp`` (HL7 v2), ``folder``. Each depends on ``base`` only (``Payload``,
   ``Destination``, ``DeliveryError``), raises ``DeliveryError`` saying whether a retry may
   help, and has a ``probe`` (``Probeable``) saying whether it answers.

``config`` holds the destinations' configuration (a pydantic union on ``type``) and builds a
destination from it; ``publisher`` sends worklist changes straight to one destination.
"""
