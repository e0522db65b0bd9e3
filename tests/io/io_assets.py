"""Known facts about the real volumes the io tests use (no test logic here)."""

from pathlib import Path

CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
#: Cranium.inv3 (InVesalius example): axial head CT, (z, y, x), spacing in mm.
CRANIUM_SHAPE = (108, 256, 256)
CRANIUM_SPACING = (1.5, 0.9570312, 0.9570312)

#: Identifiers planted in test series; none may come out of the reader.
PATIENT_TAGS = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID-73519",
    "PatientBirthDate": "19610412",
    "AccessionNumber": "ACC-55102",
}
