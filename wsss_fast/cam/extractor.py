"""Batched CAM, Grad-CAM and Grad-CAM++ for every positive (image, class) pair at once.

Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016 (CAM);
Selvaraju et al., "Grad-CAM", ICCV 2017; Chattopadhay et al., "Grad-CAM++", WACV 2018;
multi-scale and flip aggregation as ``make_cam`` of Ahn et al., "Weakly Supervised
Learning of Instance Segmentation with Inter-pixel Relations" (IRNet), CVPR 2019.

How one call works, per scale:

1. One forward of the (scaled, optionally flip-concatenated) batch. Everything before the
   target layer runs under ``torch.no_grad()``; a temporary forward hook replaces the
   target layer's output by a detached leaf that requires grad, so the autograd graph
   spans only the layers between the target layer and the scores.
2. For Grad-CAM(++) the gradients of every positive (image, class) score w.r.t. that
   leaf come from one ``torch.autograd.grad(..., is_grads_batched=True)`` call (a plain
   call when every image has one positive class). Nothing flows into the parameters or
   the input. ``method="cam"`` uses the classifier's weight rows and runs no backward.
3. Weights (:func:`wsss_fast.ops.gradcampp_weights`, the mean gradient, or the classifier
   rows) and maps (:func:`wsss_fast.ops.weighted_cam`) are computed on the device.

Maps of all scales and flips are summed after resizing, as IRNet's ``make_cam``: to
``ceil(H/4) x ceil(W/4)`` for ``cams`` and, for ``high_res``, to the input size padded
up to a multiple of the network stride and cropped. The summed maps are kept unnormalized
(``raw``, ``raw_high_res``) and normalized per map by their maximum as IRNet does:
``cam / (max(cam) + 1e-5)`` (the maps are already >= 0, so this equals a min-max
normalization up to the offset of maps with a positive minimum).

The model runs in eval mode during a call (every module's own ``training`` flag is
restored afterwards): BatchNorm uses its running statistics, so images of a batch never
influence each other's maps, and dropout/DropBlock are off. Hooks are removed and the
graph is freed when a call returns or raises.
"""

from __future__ import annotations

import difflib
import math
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..engine.transfer import to_device
from ..ops.gradcampp_weights import VARIANTS, gradcampp_weights
from ..ops.weighted_cam import weighted_cam
from .result import CAMResult, LayerCAMs, empty_result, strided_size

METHODS = ("gradcam++", "gradcam", "cam")
NORM_EPS = 1e-5  # IRNet make_cam: cam / (max + 1e-5)


def _resolve_module(model: nn.Module, spec, what: str) -> tuple[str, nn.Module]:
    names = dict(model.named_modules())
    if isinstance(spec, nn.Module):
        for name, mod in names.items():
            if mod is spec:
                return name, mod
        raise ValueError(f"CAMExtractor: the given {what} module is not a submodule of the model")
    if not isinstance(spec, str):
        raise TypeError(f"CAMExtractor: {what} must be an nn.Module or a dotted name, got {type(spec).__name__}")
    if spec in names:
        return spec, names[spec]
    close = difflib.get_close_matches(spec, [n for n in names if n], n=5)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(f"CAMExtractor: {what} {spec!r} is not a submodule of the model{hint}")


def _find_classifier(model: nn.Module) -> nn.Module:
    last = None
    for mod in model.modules():
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1)):
            last = mod
    if last is None:
        raise ValueError(
            "CAMExtractor: method='cam' needs a linear head; no nn.Linear or 1x1 nn.Conv2d found, "
            "pass classifier="
        )
    return last


class _Slots(NamedTuple):
    """A batch's positive pairs on the model's device: ``pos [B, N]``; ``classes``, ``valid
    [B, C]`` (C = most positives of an image; padded slots invalid, class 0); ``image``, ``slot [P]``."""

    pos: Tensor
    classes: Tensor
    valid: Tensor
    image: Tensor
    slot: Tensor


def _slots(pos: Tensor, device: torch.device) -> _Slots:
    """The slot layout of ``pos [B, N]`` (bool), computed on the host and sent to ``device``.

    Its size depends on the labels, so they are read once: labels given on the host (make-cam's
    ground truth) cost no wait, and nothing later in the call waits for the GPU (pairs are
    picked by index, not by a boolean mask).
    """
    pos = pos.cpu()
    counts = pos.sum(dim=1)
    cmax = int(counts.max()) if pos.shape[0] else 0
    order = torch.argsort((~pos).to(torch.int8), dim=1, stable=True)[:, :cmax]
    valid = torch.arange(cmax)[None, :] < counts[:, None]
    classes = torch.where(valid, order, torch.zeros_like(order))
    image, slot = valid.nonzero(as_tuple=True)
    return _Slots(*(to_device(t, device) for t in (pos, classes, valid, image, slot)))


class CAMExtractor:
    """Batched class activation maps of a classifier.

    Args:
        model: classifier returning scores ``[B, N]``.
        target_layer: submodule (or its dotted name) whose 4-D output ``[B, K, h, w]`` the maps
            are built from, usually the last feature map before global pooling.
        method: ``"gradcam++"``, ``"gradcam"`` or ``"cam"`` (classifier weights, no backward).
        classifier: for ``method="cam"``: the linear head (``nn.Linear`` with weight ``[N, K]`` or
            1x1 ``nn.Conv2d``), or its dotted name; default: the last such module. Bias is ignored.
        variant: Grad-CAM++ formula, ``"paper"`` (pytorch-grad-cam) or ``"wsmis"`` (the seed
            code, which also back-propagates ``exp(score)``); see
            :mod:`wsss_fast.ops.gradcampp_weights`.
        eps: Grad-CAM++ denominator epsilon (default per variant).

    Example:
        >>> ext = CAMExtractor(model, "layer4", method="gradcam++")
        >>> res = ext(images, labels, scales=(1.0, 0.5, 1.5), flip=True)
        >>> res.cams.shape  # [P, ceil(H/4), ceil(W/4)]
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str,
        method: str = "gradcam++",
        classifier: nn.Module | str | None = None,
        *,
        variant: str = "paper",
        eps: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"CAMExtractor: model must be an nn.Module, got {type(model).__name__}")
        if method not in METHODS:
            raise ValueError(f"CAMExtractor: method must be one of {METHODS}, got {method!r}")
        if variant not in VARIANTS:
            raise ValueError(f"CAMExtractor: variant must be one of {VARIANTS}, got {variant!r}")
        self.model = model
        self.target_name, self.target_layer = _resolve_module(model, target_layer, "target_layer")
        self.method = method
        self.variant = variant
        self.eps = eps
        self.classifier: nn.Module | None = None
        if method == "cam":
            if classifier is None:
                self.classifier = _find_classifier(model)
            else:
                self.classifier = _resolve_module(model, classifier, "classifier")[1]
            if not isinstance(self.classifier, (nn.Linear, nn.Conv2d)):
                raise TypeError("CAMExtractor: classifier must be an nn.Linear or a 1x1 nn.Conv2d")

    def __repr__(self) -> str:
        return f"CAMExtractor(target_layer={self.target_name!r}, method={self.method!r}, variant={self.variant!r})"

    # ------------------------------------------------------------------ forward
    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run the model; return (target activation leaf, scores)."""
        need_grad = self.method != "cam"
        state: dict = {"calls": 0, "act": None}

        def hook(module, inputs, output):
            state["calls"] += 1
            if state["calls"] > 1:
                raise RuntimeError(
                    f"CAMExtractor: target layer {self.target_name!r} ran more than once in one forward"
                )
            if not isinstance(output, Tensor) or output.dim() != 4:
                got = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise TypeError(
                    f"CAMExtractor: target layer {self.target_name!r} must output a 4-D tensor "
                    f"[B, K, h, w], got {got}"
                )
            act = output.detach()
            if need_grad:
                act.requires_grad_(True)
                torch.set_grad_enabled(True)  # restored by the enclosing no_grad() on exit
            state["act"] = act
            return act.clone()  # downstream in-place ops must not touch the leaf

        handle = self.target_layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = self.model(x)
        finally:
            handle.remove()
        if state["act"] is None:
            raise RuntimeError(f"CAMExtractor: target layer {self.target_name!r} was not called in forward")
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            got = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise TypeError(f"CAMExtractor: the model must return scores [B, N] with B={x.shape[0]}, got {got}")
        return state["act"], logits

    def _weights(self, act: Tensor, logits: Tensor, classes: Tensor, valid: Tensor) -> Tensor:
        """Channel weights ``[B, C, K]`` of the slots (zero in padded slots)."""
        b, k = act.shape[:2]
        c = classes.shape[1]
        if c == 0:
            return act.new_zeros((b, 0, k))
        if self.method == "cam":
            wcls = self.classifier.weight.detach()
            wcls = wcls.reshape(wcls.shape[0], -1)
            if wcls.shape[1] != k:
                raise ValueError(
                    f"CAMExtractor: classifier weight has {wcls.shape[1]} input channels but the target "
                    f"layer outputs K={k}"
                )
            w = wcls.to(act.dtype)[classes]  # [B, C, K]
            return w * valid[..., None].to(w.dtype)
        if not logits.requires_grad:
            raise RuntimeError(
                f"CAMExtractor: the scores do not depend on target layer {self.target_name!r}"
            )
        go = torch.zeros((c, b, logits.shape[1]), dtype=logits.dtype, device=logits.device)
        go.scatter_(2, classes.t()[..., None], valid.t()[..., None].to(go.dtype))
        try:
            if c == 1:
                grads = torch.autograd.grad(logits, act, go[0])[0][None]
            else:
                grads = torch.autograd.grad(logits, act, go, is_grads_batched=True)[0]
        except RuntimeError as exc:
            if "not have been used in the graph" in str(exc):
                raise RuntimeError(
                    f"CAMExtractor: the scores do not depend on target layer {self.target_name!r}"
                ) from exc
            raise
        g = grads.transpose(0, 1)  # [B, C, K, h, w] view
        if self.method == "gradcam":
            return g.mean(dim=(-2, -1))
        if self.variant == "wsmis":  # the seed code back-propagates exp(score)
            g = g * logits.detach().gather(1, classes).exp().to(g.dtype)[..., None, None, None]
        return gradcampp_weights(act.detach(), g, variant=self.variant, eps=self.eps)


    def _labels(self, labels: Tensor | None, logits: Tensor, threshold: float | None, allow_empty: bool) -> Tensor:
        b, n = logits.shape
        if labels is None:
            if threshold is None:
                pos = torch.zeros((b, n), dtype=torch.bool, device=logits.device)
            else:
                pos = torch.sigmoid(logits.detach().float()) > threshold
            if threshold is None or n > 1:  # multi-class: every image holds some class (VOC)
                top = logits.detach().argmax(dim=1)
                none = ~pos.any(dim=1)
                pos[torch.arange(b, device=pos.device), top] |= none
            return pos
        if not isinstance(labels, Tensor):
            raise TypeError(f"CAMExtractor: labels must be a multi-hot tensor [B, N], got {type(labels).__name__}")
        if labels.dim() != 2 or tuple(labels.shape) != (b, n):
            raise ValueError(
                f"CAMExtractor: labels must be a multi-hot tensor [B, N] = [{b}, {n}], got shape {list(labels.shape)}"
            )
        pos = labels != 0  # where the labels are: host labels are read without waiting for the GPU
        if not allow_empty and not bool(pos.any()):
            raise ValueError(
                "CAMExtractor: labels have no positive class in the batch; pass labels=None to use the "
                "predicted classes, or allow_empty=True to get an empty result"
            )
        return pos

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            got = f"{images.dtype} {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"CAMExtractor: images must be a floating tensor [B, 3, H, W], got {got}")
        if images.shape[0] == 0 or images.shape[-1] == 0 or images.shape[-2] == 0:
            raise ValueError(f"CAMExtractor: images must be non-empty, got shape {list(images.shape)}")

    def _device(self, images: Tensor) -> Tensor:
        p = next(self.model.parameters(), None)
        if p is not None and images.device != p.device:
            images = images.to(p.device)
        if images.is_inference():
            images = images.clone()
        return images

    # ------------------------------------------------------------------ public
    def layer_cams(self, images: Tensor, labels: Tensor | None = None, *, threshold: float | None = 0.5) -> LayerCAMs:
        """Single-scale, un-flipped maps and weights at the target layer's resolution.

        Args:
            images: ``[B, 3, H, W]``.
            labels: multi-hot ``[B, N]`` or None (predicted classes, see :meth:`__call__`).
            threshold: sigmoid threshold for predicted classes.

        Returns:
            :class:`LayerCAMs` in the padded ``[B, C]`` slot layout.
        """
        self._check_images(images)
        with _EvalMode(self.model), torch.inference_mode(False):
            images = self._device(images)
            act, logits = self._forward(images)
            sl = _slots(self._labels(labels, logits.detach(), threshold, allow_empty=True), logits.device)
            w = self._weights(act, logits, sl.classes, sl.valid).detach()
            maps = weighted_cam(act.detach(), w, normalize=False)
            return LayerCAMs(maps, w, sl.classes, sl.valid, logits.detach())

    def __call__(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        *,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        threshold: float | None = 0.5,
        allow_empty: bool = False,
    ) -> CAMResult:
        """Maps of every positive (image, class) pair, aggregated over scales and flips.

        Args:
            images: ``[B, 3, H, W]`` normalized images (moved to the model's device).
            labels: multi-hot ``[B, N]`` (bool or numeric, nonzero = positive). None: the classes
                with ``sigmoid(score) > threshold`` at the scale closest to 1 and, when there
                are several classes, at least the top-scoring class of each image (a one-class
                model's negative images are negatives). Images without a positive class get no maps.
            scales: input scales; images are resized bicubically (antialiased, like IRNet's PIL
                resize) to ``round(H * s) x round(W * s)``.
            flip: also run the horizontally flipped images (concatenated into the same batch).
            threshold: sigmoid threshold for predicted classes (None: top class only).
            allow_empty: return an empty result instead of raising when ``labels`` has no positive.

        Returns:
            :class:`CAMResult` with P = number of positive pairs.

        Raises:
            ValueError: bad images, scales, or labels (wrong shape, no positive class).
            TypeError: the target layer or model outputs have the wrong form.
        """
        self._check_images(images)
        scales = [float(s) for s in scales]
        if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales):
            raise ValueError(f"CAMExtractor: scales must be a non-empty list of positive floats, got {scales}")
        b, _, h, w = images.shape
        strided = strided_size((h, w))
        order = sorted(range(len(scales)), key=lambda i: (abs(math.log(scales[i])), i))
        with _EvalMode(self.model), torch.inference_mode(False):
            images = self._device(images)
            sl = ref_logits = None
            acc_s = acc_h = None
            for i in order:
                s = scales[i]
                size = (max(1, round(h * s)), max(1, round(w * s)))
                x = images if size == (h, w) else F.interpolate(
                    images, size=size, mode="bicubic", align_corners=False, antialias=True
                )
                if flip:
                    x = torch.cat([x, x.flip(-1)], dim=0)
                act, logits = self._forward(x)
                if sl is None:  # reference scale: labels, slots
                    ref_logits = logits[:b].detach()
                    sl = _slots(self._labels(labels, ref_logits, threshold, allow_empty), logits.device)
                    if sl.classes.shape[1] == 0:
                        del act, logits
                        return empty_result(sl.pos, ref_logits, (h, w))
                classes, valid = sl.classes, sl.valid
                cls_x, val_x = (classes.repeat(2, 1), valid.repeat(2, 1)) if flip else (classes, valid)
                wts = self._weights(act, logits, cls_x, val_x)
                maps = weighted_cam(act.detach(), wts, normalize=False).float()
                del act, logits, wts, x
                if flip:
                    maps = maps[:b] + maps[b:].flip(-1)
                st = 2 ** max(0, round(math.log2(size[0] / maps.shape[-2]))) if maps.shape[-2] else 1
                up = (math.ceil(h / st) * st, math.ceil(w / st) * st)
                s_map = F.interpolate(maps, size=strided, mode="bilinear", align_corners=False)
                h_map = F.interpolate(maps, size=up, mode="bilinear", align_corners=False)[..., :h, :w]
                acc_s = s_map if acc_s is None else acc_s + s_map
                acc_h = h_map if acc_h is None else acc_h + h_map
                del maps, s_map, h_map
        raw, raw_hr = acc_s[sl.image, sl.slot], acc_h[sl.image, sl.slot]
        cams = raw / (raw.amax(dim=(-2, -1), keepdim=True) + NORM_EPS)
        high = raw_hr / (raw_hr.amax(dim=(-2, -1), keepdim=True) + NORM_EPS)
        return CAMResult(cams, high, raw, raw_hr, sl.classes[sl.image, sl.slot], sl.image, sl.pos, ref_logits)


class _EvalMode:
    """Put every module in eval mode; restore each module's own flag on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc) -> None:
        for m, flag in self.flags:
            m.training = flag
        self.flags = []
