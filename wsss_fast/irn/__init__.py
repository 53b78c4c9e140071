"""wsss_fast.irn: step 2 of the pipeline, IRNet (Ahn et al., CVPR 2019) on step 1's CAMs.

- :mod:`.ir_label` (``make-ir-label``): confident fg/bg labels, threshold + dense CRF (:mod:`.crf`).
- :mod:`.model`: IRNet's boundary and displacement branches on a frozen ResNet.
- :mod:`.pair_labels`, :mod:`.loss`, :mod:`.train` (``train-irn``): inter-pixel relation training.
- :mod:`.walk`: the boundary map and the random walk of a batch, and labels from its maps.
- :mod:`.sem_seg` (``make-sem-seg``, ``eval-sem-seg``): random-walk pseudo labels for data sets and their evaluation.
- :mod:`.show` (``show``): PNG panels of every intermediate map.
"""
