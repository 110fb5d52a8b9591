"""HL7 v2 to the RIS: the ORU^R01 message (a pure function of the study) and MLLP transport."""
