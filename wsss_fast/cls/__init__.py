"""Step 1 of the pipeline: the multi-label classifier with DropBlock (Viniavskyi et al., AIME 2020).

- :mod:`.model`: dilated VGG16-D1 and ResNets at output stride 8 (``build_classifier``,
  ``load_classifier``).
- :mod:`.train` (``train-cls``): training with class-balanced batches, resumable, under torchrun.

Its CAMs are made by :mod:`wsss_fast.cam`.
"""
