"""Data in: from a folder someone hands over to the face arrays a learner reads.

`layouts` recognises a dataset's layout and splits it; `images` reads images and videos behind
size and format checks; `faces` and `landmarks` find and frame faces (MTCNN, dlib); `extraction`
is a whole dataset's faces, the DVC stage's work; `arrays` is their layout on disk (and
`ExperienceSpec`, one method's faces as a learner sees them); `datasets` the torch Datasets over
them; `augment`, `sbi` (self-blended fakes) and `masks` change faces while training; `leaks`
proves no test face trains; `demo_data` makes the synthetic demo dataset. Nothing here knows of
learning, MLflow or Prefect.
"""
