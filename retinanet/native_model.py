"""The official RetinaNet as an eager nn.Module, built from torchvision's parts, holding the
weights of a TorchScript archive (the official resnext50_32x4d_fpn.pth, or the demo's).

    make perf MODEL_IMPL=native [COMPILE=1]

The archive's code runs only under TorchScript; the same weights in an eager module open
what TorchScript cannot: torch.compile, CUDA graphs, batched post-processing. The
architecture is the one mlcommons/training trained (retired_benchmarks/retinanet, a
torchvision 0.10-era copy): ResNeXt50-32x4d with frozen batch norm, an FPN on C3-C5 with
P6/P7 from P5, 9 anchors per place, heads of Conv2d+ReLU, ImageNet normalisation and a
fixed 800x800 resize inside the model, score 0.05, NMS 0.5, 1,000 candidates per level
and 300 detections per image. The archive's weights load strictly: no missing or
unexpected key, the old FPN and head key layouts mapped to today's.

The forward is two parts: `dense` (normalise, backbone, FPN, heads: fixed shapes, what
torch.compile and CUDA graphs take) and `detections` (data-dependent: thresholds, top-k,
box decoding, NMS), which runs in fp32 whatever the autocast around it.

NNPACK=1 (`from_archive_nnpack`, the CPU fp32 fast form) runs the 3x3 convolutions of the
FPN and the heads, most of the model's work, through NNPACK, which ships inside torch's CPU
builds: its Winograd kernels did them about 3x faster than oneDNN's on an AVX2 CPU in fp32
(BENCHMARKS.md). It also folds the backbone's batch norms, runs the backbone in
channels_last and takes a sliced top-k. Detections differ from plain fp32 by rounding and
by the choice among equal scores: the accuracy guard measures by how much.
"""

import re
import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FrozenBatchNorm2d, batched_nms, clip_boxes_to_image
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retinanet import INPUT_SIZE
from retinanet.classes import NUM_CLASSES

IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet, as the official transform has them
IMAGE_STD = (0.229, 0.224, 0.225)
SCORE_THRESH = 0.05
NMS_THRESH = 0.5
CANDIDATES_PER_LEVEL = 1000
DETECTIONS_PER_IMAGE = 300
# the key the loader looks for, to find the wrapper prefix of an archive's state dict
ANCHOR_KEY = "backbone.body.conv1.weight"


def anchor_generator():
    # three scales an octave apart in thirds, three aspect ratios: 9 anchors, P3-P7
    sizes = tuple(
        (x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512)
    )
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def fixed_anchors(generator, size):
    """The HWA of each level and the anchors [HWA, 4] of a size x size input: P3-P7 are the
    input halved 3 to 7 times (each stride-2 layer gives ceil(n / 2))."""
    sides, side = [], size
    for halvings in range(1, 8):
        side = -(-side // 2)
        if halvings >= 3:
            sides.append(side)
    features = [torch.empty(1, 1, n, n) for n in sides]
    image = torch.empty(1, 3, size, size)
    anchors = generator(ImageList(image, [(size, size)]), features)[0]
    per_place = generator.num_anchors_per_location()[0]
    return [n * n * per_place for n in sides], anchors


class NativeRetinaNet(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES, size=INPUT_SIZE):
        super().__init__()
        self.backbone = resnet_fpn_backbone(
            backbone_name="resnext50_32x4d",
            weights=None,
            norm_layer=FrozenBatchNorm2d,
            trainable_layers=5,
            returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256),
        )
        self.anchor_generator = anchor_generator()
        self.head = RetinaNetHead(
            self.backbone.out_channels,
            self.anchor_generator.num_anchors_per_location()[0],
            num_classes,
        )
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.size = size
        # not in the state dict: the archive has no such keys
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        # The anchors of the fixed input size, once: a buffer moves with the model
        self.per_level, anchors = fixed_anchors(self.anchor_generator, size)
        self.per_place = self.anchor_generator.num_anchors_per_location()[0]
        self.register_buffer("anchors", anchors, persistent=False)
        # the CPU fast form's (from_archive_nnpack), which give the archive's detections up
        # to rounding and to the choice among equal scores
        self.backbone_memory_format = None
        self.fast_top_k = False
        self.dense_forward = self.dense
        self.cuda_graphs = False

    def dense(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits [N, HWA, classes] and box regression [N, HWA, 4] of size x size images."""
        images = (images - self.mean) / self.std
        if self.backbone_memory_format is not None:  # else as given (CHANNELS_LAST)
            images = images.contiguous(memory_format=self.backbone_memory_format)
        features = list(self.backbone(images).values())
        out = self.head(features)
        return out["cls_logits"], out["bbox_regression"]

    def detections(self, logits: Tensor, regression: Tensor) -> list[dict[str, Tensor]]:
        """Per image: the top candidates of each level above the score threshold, decoded and
        clipped, then class-wise NMS and the best 300. Thresholds, top-k and decoding run
        for the whole batch at once; only NMS is per image."""
        logits, regression = logits.float(), regression.float()
        num_classes = logits.shape[-1]
        boxes, scores, labels = [], [], []
        start = 0
        for count in self.per_level:
            level = logits[:, start : start + count]
            if self.fast_top_k:
                top_logits, top = top_candidates(level, self.per_place)
                top_scores = torch.sigmoid(top_logits)  # monotonic: the same candidates
            else:  # the archive's own order: equal scores are chosen among as it chooses
                level_scores = torch.sigmoid(level).flatten(1)
                top_scores, top = level_scores.topk(
                    min(CANDIDATES_PER_LEVEL, level_scores.shape[1]), dim=1
                )
            anchor_index = torch.div(top, num_classes, rounding_mode="floor")
            level_boxes = self.box_coder.decode_single(
                regression[:, start : start + count]
                .gather(1, anchor_index[..., None].expand(-1, -1, 4))
                .reshape(-1, 4),
                self.anchors[start : start + count][anchor_index.flatten()],
            ).reshape(logits.shape[0], -1, 4)
            boxes.append(clip_boxes_to_image(level_boxes, (self.size, self.size)))
            scores.append(top_scores)
            labels.append(top % num_classes)
            start += count
        boxes, scores, labels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(labels, 1)
        keep_all = scores > SCORE_THRESH
        results = []
        for i in range(logits.shape[0]):
            b, s, c = boxes[i][keep_all[i]], scores[i][keep_all[i]], labels[i][keep_all[i]]
            keep = batched_nms(b, s, c, NMS_THRESH)[:DETECTIONS_PER_IMAGE]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": c[keep]})
        return results

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        height, width = images.shape[-2:]
        if (height, width) != (self.size, self.size):  # the official transform's fixed resize
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear")
        if self.cuda_graphs:  # a new inference: earlier graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        logits, regression = self.dense_forward(images)
        with torch.autocast(images.device.type, enabled=False):
            results = self.detections(logits, regression)
        if (height, width) != (self.size, self.size):  # boxes in the input's pixels
            scale = torch.tensor([width / self.size, height / self.size] * 2, device=images.device)
            for result in results:
                result["boxes"] = result["boxes"] * scale
        return results

    def compile_static(self):
        """torch.compile (inductor) of the dense part only, its shapes fixed; on a GPU with
        CUDA graphs (mode reduce-overhead), on a CPU with inductor's freezing (weights folded
        in as constants: inference only). Post-processing stays eager."""
        cuda = self.anchors.is_cuda
        if not cuda:
            import torch._inductor.config

            torch._inductor.config.freezing = True
        self.dense_forward = torch.compile(
            self.dense, mode="reduce-overhead" if cuda else None, dynamic=False
        )
        self.cuda_graphs = cuda
        return self


def top_candidates(logits: Tensor, slices: int) -> tuple[Tensor, Tensor]:
    """The CANDIDATES_PER_LEVEL largest logits of each image's level [N, HWA, classes], and
    their places in the flattened level. One torch.topk over a row of 24 million (P3) took a
    CPU 2.5x as long as a top-k of each of `slices` parts (which divide HWA) and then of
    their winners: the same candidates."""
    batch, count, classes = logits.shape
    parts = logits.reshape(batch, slices, count // slices * classes)
    part_top, part_place = parts.topk(min(CANDIDATES_PER_LEVEL, parts.shape[2]), dim=2)
    offsets = torch.arange(slices, device=logits.device).view(1, slices, 1) * parts.shape[2]
    top, winners = part_top.flatten(1).topk(min(CANDIDATES_PER_LEVEL, count * classes), dim=1)
    return top, (part_place + offsets).flatten(1).gather(1, winners)


@torch.library.custom_op("retinanet::nnpack_conv2d", mutates_args=())
def nnpack_conv2d(
    x: Tensor, weight: Tensor, bias: Tensor, padding: list[int], stride: list[int]
) -> Tensor:
    """One image per call: NNPACK's batched path was slower than that. An op of its own, so
    that torch.compile (COMPILE=1) calls it as it is."""
    x, weight = x.contiguous(), weight.contiguous()  # NNPACK takes NCHW
    outputs = [
        torch._nnpack_spatial_convolution(image, weight, bias, padding, stride)
        for image in x.split(1)
    ]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


@nnpack_conv2d.register_fake
def _(x, weight, bias, padding, stride):
    sides = [
        (x.shape[i + 2] + 2 * padding[i] - weight.shape[i + 2]) // stride[i] + 1 for i in (0, 1)
    ]
    return x.new_empty(x.shape[0], weight.shape[0], *sides)


class NNPACKConv2d(nn.Conv2d):
    """A convolution through NNPACK where NNPACK takes it (a CPU tensor in fp32, no autocast),
    else the usual path."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        return nnpack_conv2d(x, self.weight, self.bias, list(self.padding), list(self.stride))


def use_nnpack(module):
    """Every plain 3x3 convolution below `module` made an NNPACKConv2d, weights kept."""
    for child in module.children():
        if type(child) is nn.Conv2d and (child.kernel_size, child.groups, child.dilation) == (
            (3, 3), 1, (1, 1)
        ):  # fmt: skip
            child.__class__ = NNPACKConv2d  # same parameters and state-dict keys
        else:
            use_nnpack(child)
    return module


# -- the archive's weights ---------------------------------------------------------------

# Layouts of older torchvision, as the official archive has them: FPN blocks were plain
# Conv2d (today Conv2dNormActivation, a Sequential), and the heads' conv a Sequential of
# Conv2d, ReLU, ... (today Conv2dNormActivation blocks).
OLD_KEYS = [
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    (
        re.compile(r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$"),
        lambda m: f"{m.group(1)}.{int(m.group(2)) // 2}.0.{m.group(3)}",
    ),
]


def model_keys(state, model):
    """The archive's state dict in the model's names: the archive's wrapper prefix (the
    demo's `detector.`) removed, and old key layouts mapped to the model's. A key that maps
    to nothing is kept as it is, for the strict load to name."""
    prefixes = [key[: -len(ANCHOR_KEY)] for key in state if key.endswith(ANCHOR_KEY)]
    if len(prefixes) != 1:
        raise ValueError(f"not a RetinaNet of this architecture: no single '{ANCHOR_KEY}'")
    prefix = prefixes[0]
    wanted = set(model.state_dict())
    renamed = {}
    for key, value in state.items():
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name not in wanted:
            for pattern, new in OLD_KEYS:
                candidate = pattern.sub(new, name)
                if candidate in wanted:
                    name = candidate
                    break
        renamed[name] = value
    return renamed


def from_state_dict(state):
    model = NativeRetinaNet()
    model.load_state_dict(model_keys(state, model), strict=True)
    return model.eval()


def from_archive(path):
    """The native model with the weights of a TorchScript archive, loaded strictly."""
    archive = torch.jit.load(str(path), map_location="cpu")
    return from_state_dict(archive.state_dict())


def fits(path):
    """Whether a file is a TorchScript archive holding this architecture's weights, every key
    in its place and of its shape: what MODEL_IMPL=auto asks before it takes the native model."""
    try:
        with warnings.catch_warnings():  # torch.jit.load's deprecation, before every run
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        if not any(key.endswith(ANCHOR_KEY) for key in state):
            return False  # another architecture: not worth building this one (about 1 s)
        model = NativeRetinaNet()
        mapped = model_keys(state, model)
    except (RuntimeError, ValueError, OSError):
        return False
    wanted = model.state_dict()
    return mapped.keys() == wanted.keys() and all(
        mapped[key].shape == value.shape for key, value in wanted.items()
    )


def fold_frozen_batch_norm(module):
    """Every FrozenBatchNorm2d that follows a Conv2d (ResNet's order of registration) folded
    into that convolution's weights and bias: one pass less over each feature map."""
    names = list(module._modules)
    for before, name in zip([None, *names], names):
        child = module._modules[name]
        conv = module._modules.get(before)
        if isinstance(child, FrozenBatchNorm2d) and type(conv) is nn.Conv2d:
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, child.running_mean, child.running_var, child.eps,
                child.weight, child.bias,
            )  # fmt: skip
            module._modules[name] = nn.Identity()
        elif not isinstance(child, FrozenBatchNorm2d):
            fold_frozen_batch_norm(child)
    return module


def from_archive_nnpack(path):
    """The CPU fp32 fast form of from_archive: the FPN's and heads' 3x3 convolutions through
    NNPACK (the backbone's are grouped or strided 7x7, which NNPACK does not take or does
    slower), the backbone's batch norms folded into its convolutions and the backbone in
    channels_last (oneDNN's faster layout there; NNPACK takes NCHW), and the sliced top-k.
    Each was measured faster on an AVX2 CPU (BENCHMARKS.md); the detections are the
    archive's up to rounding and to the choice among equal scores."""
    if not torch._nnpack_available():  # also NNPACK's one-time initialisation
        raise RuntimeError("this torch has no NNPACK: run with NNPACK=0")
    model = from_archive(path)
    with torch.no_grad():
        fold_frozen_batch_norm(model.backbone.body)
    use_nnpack(model.backbone.fpn)
    use_nnpack(model.head)
    model.backbone_memory_format = torch.channels_last
    model.fast_top_k = True
    return model
