"""Serving: the champion answering people.

`detector` loads a registered model ready to answer; `detect` turns photos and videos into
verdicts (faces cut as the model was trained, trust per face); `verdicts` is what a person is
shown (reason, model card, table); `explain` the Grad-CAM evidence; `evaluate` scores a labelled
folder; `api` the REST API and web page (`web/`), behind `api_guards`.
"""
