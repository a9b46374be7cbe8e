"""Reliability of ``statlane serve``: SIGKILL trials, a PACS outage, a burst, hostile peers.

``python -m benchmarks.reliability [--smoke] [--out benchmarks/results]`` starts Orthanc (Debian
package) and ``statlane serve`` as a separate process, sends synthetic studies with dcmtk's
storescu, and measures:

- **kill trials**: SIGKILL (by PID) at a seeded random moment during ingest, the quiet period,
  inference, delivery, or delivery while Orthanc is down; the service restarts on the same var
  dir, the modality resends what was not acknowledged. Per trial: lost, duplicated, stale and
  stuck results (definitions in :mod:`benchmarks.reliability.audit`).
- **outage**: Orthanc stopped while results are produced, then started again; seconds from its
  return to the last SR stored, dead letters. Baseline: exponential backoff alone (the retry
  the old policy would make next) and the old 8-attempt policy's dead letters (~259 s).
- **burst**: many small radiographs at once; peak and settled RSS of the service (bytes),
  spool size on disk (bytes) and stat deadline misses (``statlane_deadline_misses_total``).
- **hostile**: a PDU header declaring 4 GiB, 20 silent DICOM connections, an HTTP slow-loris
  and an unframed MLLP trickle, each from 127.0.0.2 while a real modality (storescu and echoscu
  from 127.0.0.1) sends a study: pass/fail and seconds.

The baseline for the counts is the expectation itself: 0 lost, duplicated, stale and stuck, and
the modality always gets through.
"""
