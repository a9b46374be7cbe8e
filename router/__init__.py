"""Routing rules, result objects, HL7/FHIR messages, delivery outbox and worklist ranking."""
