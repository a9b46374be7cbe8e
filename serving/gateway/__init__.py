"""The DICOM gateway: C-STORE/C-ECHO SCP, STOW-RS and HL7 MLLP in front of the durable spool."""
