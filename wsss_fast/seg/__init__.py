"""wsss_fast.seg: step 3, the segmentation network trained on IRNet pseudo labels.

Viniavskyi, Dobko, Dobosevych, "Weakly-Supervised Segmentation for Disease Localization in
Chest X-Ray Images", AIME 2020. ``model`` builds the smp U-Net / DeepLabV3+ (offline
weights, any input size), ``train`` is ``wsss-fast train-seg``, ``infer`` is
``wsss-fast predict-seg``.
"""

from .model import PaddedSegModel, build_seg_model, load_encoder_weights, model_from_cfg

__all__ = ["PaddedSegModel", "build_seg_model", "load_encoder_weights", "model_from_cfg",
           "train_seg", "predict_seg"]


def __getattr__(name: str):
    if name == "train_seg":
        from .train import train_seg

        return train_seg
    if name == "predict_seg":
        from .infer import predict_seg

        return predict_seg
    raise AttributeError(f"module 'wsss_fast.seg' has no attribute {name!r}")
