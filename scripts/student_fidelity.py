"""How closely each student follows its teacher on the test set: top-1 agreement with the teacher ensemble, and who is
right where they disagree (results/lenet5_student/notes.md).

    python scripts/student_fidelity.py multirun/lenet5_teacher multirun/lenet5_student
"""

import sys
from pathlib import Path

from fashion_lenet.analysis.ensemble import member_probabilities
from fashion_lenet.sweep.config import PROJECT_ROOT
from fashion_lenet.training.data import FashionMNISTDataModule
from fashion_lenet.training.ensemble import load_ensemble


def main(teacher_folder: str, student_folder: str) -> None:
    datamodule = FashionMNISTDataModule(str(PROJECT_ROOT / "data"))
    datamodule.prepare_data()
    datamodule.setup()
    images, labels = datamodule.splits["test"]
    teacher, _ = load_ensemble([Path(teacher_folder)])
    students, jobs = load_ensemble([Path(student_folder)])
    taught = member_probabilities(teacher, images).mean(0).argmax(-1)
    print("| student | test acc % | agreement with the teacher % | of the disagreements: teacher right / student "
          "right / both wrong |")
    print("|---|---|---|---|")
    for job, probabilities in zip(jobs, member_probabilities(students, images), strict=True):
        predicted = probabilities.argmax(-1)
        differ = predicted != taught
        counts = [int(((taught == labels) & differ).sum()), int(((predicted == labels) & differ).sum()),
                  int(((taught != labels) & (predicted != labels) & differ).sum())]
        print(f"| {job} | {100 * (predicted == labels).float().mean():.2f} | {100 * (~differ).float().mean():.2f} | "
              + " / ".join(map(str, counts)) + " |")
    print(f"\nteacher ensemble: test acc {100 * (taught == labels).float().mean():.2f} %")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[3].strip())
    main(*sys.argv[1:])
