"""Post-hoc classifiers (Kang et al. 2020): fitted after a stage on its frozen representation.

- `registry`: the table. Each module in `classifiers/` holds one `PosthocClassifier` subclass
  (its recipe options with defaults, how it is fitted, saved and loaded); adding a classifier
  is adding one such file.
- `head_training`: the one loop that trains a head on frozen features (cRT, LWS).
- `fit`: fitting a stage's classifiers in a run, saving them with it and loading them back.
"""
