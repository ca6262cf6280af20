"""The demo's inputs: the sample cases in examples/cases, and the tree
examples/reorganize.py must leave behind for them."""

from __future__ import annotations

from pathlib import Path

from tests.support.system import REPO

CASES = REPO / "examples" / "cases"
REORGANIZE = REPO / "examples" / "reorganize.py"

# The tree reorganize.py must leave behind for examples/cases, path -> source path
# (None: a file it writes).
EXPECTED = {
    "acme-corp-lease-dispute/Contracts/2022-09-01 first amendment.txt":
        "acme-corp-lease-dispute/Contracts/first amendment - 2022-09-01.txt",
    "acme-corp-lease-dispute/Contracts/commercial lease 2021.txt":
        "acme-corp-lease-dispute/Contracts/commercial lease 2021.txt",
    "acme-corp-lease-dispute/Correspondence/2024-02-05 notice of default.txt":
        "acme-corp-lease-dispute/Correspondence/20240205_notice_of_default.txt",
    "acme-corp-lease-dispute/Correspondence/draft.txt": "acme-corp-lease-dispute/Correspondence/draft.txt",
    "acme-corp-lease-dispute/Discovery/privilege log.txt": "acme-corp-lease-dispute/Discovery/privilege log.txt",
    "acme-corp-lease-dispute/INDEX.md": None,
    "acme-corp-lease-dispute/Pleadings/petition for declaratory judgment.txt":
        "acme-corp-lease-dispute/Pleadings/petition for declaratory judgment.txt",
    "acme-corp-lease-dispute/Unsorted/scan0004.txt": "acme-corp-lease-dispute/Correspondence/scan0004.txt",
    "acme-corp-lease-dispute/notes.md": "acme-corp-lease-dispute/notes.md",
    "estate-of-hargrove/Correspondence/2024-01-18 letter to executor (copy).txt":
        "estate-of-hargrove/Correspondence/2024-01-18 letter to executor (copy).txt",
    "estate-of-hargrove/Correspondence/2024-01-18 letter to executor.txt":
        "estate-of-hargrove/Correspondence/2024-01-18 letter to executor.txt",
    "estate-of-hargrove/Correspondence/2024-02-26 notice to creditors.txt":
        "estate-of-hargrove/Correspondence/20240226_notice_to_creditors.txt",
    "estate-of-hargrove/INDEX.md": None,
    "estate-of-hargrove/Inventory/2024-02-05 appraisal.txt": "estate-of-hargrove/Inventory/appraisal_2024_02_05.txt",
    "estate-of-hargrove/Inventory/asset inventory.txt": "estate-of-hargrove/Inventory/asset inventory.txt",
    "estate-of-hargrove/Unsorted/scan0003.txt": "estate-of-hargrove/scan0003.txt",
    "estate-of-hargrove/Will/2019-06-12 codicil.txt": "estate-of-hargrove/Will/codicil 2019-06-12.txt",
    "estate-of-hargrove/Will/last will and testament.txt": "estate-of-hargrove/Will/last will and testament.txt",
    "estate-of-hargrove/notes.md": "estate-of-hargrove/notes.md",
    "in-re-delgado-custody/Correspondence/2024-04-02 letter from guardian ad litem.txt":
        "in-re-delgado-custody/Correspondence/Apr 2 2024 letter from guardian ad litem.txt",
    "in-re-delgado-custody/Court Orders/2024-03-28 temporary order.txt":
        "in-re-delgado-custody/Court Orders/temporary order 2024-03-28.txt",
    "in-re-delgado-custody/INDEX.md": None,
    "in-re-delgado-custody/Pleadings/2024-03-20 declaración de la madre.txt":
        "in-re-delgado-custody/Pleadings/declaración de la madre 2024-03-20.txt",
    "in-re-delgado-custody/Pleadings/petition for custody.txt": "in-re-delgado-custody/Pleadings/petition for custody.txt",
    "in-re-delgado-custody/Unsorted/scan0005.txt": "in-re-delgado-custody/scan0005.txt",
    "in-re-delgado-custody/notes.md": "in-re-delgado-custody/notes.md",
    "smith-v-jones/Correspondence/2024-03-01 letter to client.txt":
        "smith-v-jones/Correspondence/2024-03-01 letter to client.txt",
    "smith-v-jones/Correspondence/2024-03-15 letter to opposing counsel.txt":
        "smith-v-jones/Correspondence/letter to opposing counsel 03-15-2024.txt",
    "smith-v-jones/Correspondence/2024-03-22 email from client.txt":
        "smith-v-jones/Correspondence/email from client March 22, 2024.txt",
    "smith-v-jones/Discovery/2024-04-10 request for production.txt":
        "smith-v-jones/Discovery/request_for_production_2024_04_10.txt",
    "smith-v-jones/Discovery/interrogatories set 1.txt": "smith-v-jones/Discovery/interrogatories set 1.txt",
    "smith-v-jones/INDEX.md": None,
    "smith-v-jones/Pleadings/answer and affirmative defenses.txt":
        "smith-v-jones/Pleadings/answer and affirmative defenses.txt",
    "smith-v-jones/Pleadings/complaint.txt": "smith-v-jones/Pleadings/complaint.txt",
    "smith-v-jones/Unsorted/scan0001.txt": "smith-v-jones/scan0001.txt",
    "smith-v-jones/Unsorted/scan0002.txt": "smith-v-jones/Discovery/scan0002.txt",
    "smith-v-jones/Unsorted/scan0006.txt": "scan0006.txt",
    "smith-v-jones/notes.md": "smith-v-jones/notes.md",
}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
