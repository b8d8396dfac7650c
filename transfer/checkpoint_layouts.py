"""Where the ResNet trunk lives in each framework's checkpoint: a table, one row a layout.

A row says where the state dict sits in the file (a path of keys from the top), the prefix of
the trunk's torchvision-named parameters inside it, the candidate encoders (online / momentum,
student / teacher) and which one the framework's own export or evaluation takes (only the hint
of the error a file holding two different encoders is: one must be chosen with --encoder), the
keys that mark the framework (tie-breaks between rows that read the same trunk) and what the
weights expect as input. Each row was read from the framework's own source, named in the
comment beside it. ``module.`` (DDP) before a prefix is always accepted; a trunk without it
reads the same. A row whose file is not a PyTorch state dict (deepmind/byol's haiku pickle)
has a ``reader`` that turns the file into torchvision-named state dicts first.

Every family here trains torchvision-style ResNets on RGB input normalised with the ImageNet
mean/std, stride on the 3x3 conv (STRIDE_IN_1X1 False); only MSRA/Caffe2 files differ
(detectron2 format, handled in convert.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from mocobench.conventions import RGB_IMAGENET
from mocobench.transfer.haiku_names import BYOL_EXPORT, read_byol_jax

Spec = tuple[tuple[str, ...], str]  # (keys from the top of the file to the state dict, trunk prefix)
TOP: tuple[str, ...] = ()
SD = ("state_dict",)
MODEL = ("model",)


@dataclass(frozen=True)
class Layout:
    name: str
    encoders: dict[str, tuple[Spec, ...]]  # encoder -> where it may sit (first that matches wins)
    # The encoder the framework's own export / evaluation takes, and who takes it: named in the
    # error for a file holding two different encoders ("MoCo's own converter takes query: add
    # --encoder query"), never taken unasked.
    exported: Optional[str] = None
    exporter: str = ""
    markers: tuple[str, ...] = ()  # top-level keys or state-dict key prefixes typical of the framework
    heads: tuple[str, ...] = ()  # state-dict prefixes that are heads, projectors, queues: dropped quietly
    children: bool = False  # trunk saved as nn.Sequential(*resnet.children()[:-1]): 0.weight, 4.0.conv1 ...
    conventions: dict = field(default_factory=lambda: dict(RGB_IMAGENET))
    reads: str = ""  # one line for the README / --help
    # (path, the file's object) -> {name: torchvision-named state dict} the encoders' specs read,
    # or None when the file is not of this layout; None for the PyTorch layouts (read as they are).
    reader: Optional[Callable] = None


LAYOUTS: tuple[Layout, ...] = (
    # torchvision: a bare ResNet state dict (conv1, bn1, layer1-4, fc), or under 'state_dict' /
    # 'model' (torchvision references/classification/train.py saves {'model': ...}).
    Layout("torchvision", {"model": ((TOP, ""), (SD, ""), (MODEL, ""))},
           heads=("fc.",), reads="torchvision / any bare ResNet state dict"),
    # timm: same parameter names as torchvision (timm/models/resnet.py); train.py's CheckpointSaver
    # (timm/utils/checkpoint_saver.py, read) saves {'state_dict', 'state_dict_ema', 'arch',
    # 'version', 'args', ...}: the EMA copy is a second candidate.
    Layout("timm", {"model": ((SD, ""), (TOP, "")), "ema": ((("state_dict_ema",), ""),)},
           markers=("state_dict_ema", "version"), heads=("fc.",), reads="timm train.py (state_dict / state_dict_ema)"),
    # MoCo v1/v2: facebookresearch/moco main_moco.py saves {'epoch', 'arch', 'state_dict',
    # 'optimizer'} of a DDP MoCo (moco/builder.py: encoder_q, encoder_k, queue); its
    # detection/convert-pretrain-to-detectron2.py and main_lincls.py keep encoder_q only.
    Layout("moco", {"query": ((SD, "encoder_q."),), "key": ((SD, "encoder_k."),)}, exported="query",
           exporter="MoCo's own converter (detection/convert-pretrain-to-detectron2.py)",
           markers=("queue", "queue_ptr", "bank"), heads=("queue", "queue_ptr", "bank"),
           reads="MoCo v1/v2 (and mocobench pretrain): state_dict module.encoder_q."),
    # MoCo v3: facebookresearch/moco-v3 main_moco.py saves {'state_dict': DDP MoCo_ResNet}
    # (moco/builder.py: base_encoder, momentum_encoder, predictor); main_lincls.py (read) keeps
    # module.base_encoder. without its fc (the projector).
    Layout("mocov3", {"base": ((SD, "base_encoder."),), "momentum": ((SD, "momentum_encoder."),)},
           exported="base", exporter="MoCo v3's main_lincls.py", markers=("predictor.",), heads=("predictor.",),
           reads="MoCo v3: state_dict module.base_encoder."),
    # DINO: facebookresearch/dino main_dino.py saves {'student', 'teacher', 'optimizer', 'epoch',
    # 'args', 'dino_loss'}; both are MultiCropWrapper(backbone, head), the teacher DDP-wrapped only
    # when it has BN (a ResNet: module.backbone.). eval_linear.py's --checkpoint_key picks one
    # (default teacher).
    Layout("dino", {"teacher": ((("teacher",), "backbone."),), "student": ((("student",), "backbone."),)},
           exported="teacher", exporter="DINO's eval_linear.py (--checkpoint_key teacher)", markers=("dino_loss",),
           heads=("head.",), reads="DINO full checkpoint: student / teacher module.backbone."),
    # VISSL: a checkpoint is {'classy_state_dict': {'base_model': {'model': {'trunk', 'heads'}}}};
    # the ResNe(X)t trunk (vissl/models/trunks/resnext.py, read) is an nn.ModuleDict
    # '_feature_blocks' of torchvision's modules; extra_scripts/convert_vissl_to_torchvision.py
    # (read) strips '_feature_blocks.'. Also 'model_state_dict' there, as that script accepts.
    Layout("vissl", {"trunk": ((("classy_state_dict", "base_model", "model", "trunk"), "_feature_blocks."),
                               (("model_state_dict",), "_feature_blocks."), (TOP, "_feature_blocks."))},
           markers=("classy_state_dict",), reads="VISSL: classy_state_dict ... trunk _feature_blocks."),
    # mmselfsup / mmpretrain: an mmengine checkpoint {'meta', 'state_dict', 'optimizer',
    # 'message_hub'}; the algorithm holds backbone / neck / head, momentum methods a
    # momentum_encoder (AveragedModel: .module.0 is the backbone; 0.x: encoder_k.0 / target_net.0).
    # mmcls' ResNet keeps torchvision's names (conv1, bn1, layerN.M.bnK, downsample.0/1).
    # tools/model_converters/extract_backbone_weights.py (open-mmlab/mmselfsup, read) keeps 'backbone.'.
    Layout("mmselfsup", {"backbone": ((SD, "backbone."), (SD, "encoder_q.0."), (SD, "online_net.0.")),
                         "momentum": ((SD, "momentum_encoder.module.0."), (SD, "encoder_k.0."), (SD, "target_net.0."))},
           exported="backbone", exporter="mmselfsup's extract_backbone_weights.py",
           markers=("meta", "message_hub", "neck."),
           heads=("neck.", "head.", "momentum_encoder.", "target_net.", "online_net.", "encoder_q.", "encoder_k.",
                  "queue", "data_preprocessor."),
           reads="mmselfsup / mmpretrain: state_dict backbone."),
    # solo-learn and other PyTorch Lightning modules: {'state_dict', 'pytorch-lightning_version',
    # 'epoch', 'global_step', 'optimizer_states', 'hyper_parameters', ...}; solo-learn's BaseMethod
    # holds a torchvision ResNet as self.backbone (fc = Identity), momentum methods a
    # momentum_backbone; main_linear.py (vturrisi/solo-learn, read) loads 'backbone.' (older
    # checkpoints: 'encoder.').
    Layout("lightning", {"backbone": ((SD, "backbone."), (SD, "encoder.")),
                         "momentum": ((SD, "momentum_backbone."), (SD, "momentum_encoder."))},
           exported="backbone", exporter="solo-learn's main_linear.py",
           markers=("pytorch-lightning_version", "projector.", "classifier."),
           heads=("projector.", "classifier.", "momentum_projector.", "predictor.", "prototypes.", "head."),
           reads="solo-learn / PyTorch Lightning: state_dict backbone."),
    # lightly: its examples (lightly-ai/lightly examples/pytorch*/byol.py ..., read through the
    # docs' literalinclude) build backbone = nn.Sequential(*list(resnet.children())[:-1]) and a
    # backbone_momentum deepcopy, in a LightningModule; its benchmarks keep the torchvision names.
    Layout("lightly", {"backbone": ((SD, "backbone."), (TOP, "backbone."), (TOP, "")),
                       "momentum": ((SD, "backbone_momentum."), (TOP, "backbone_momentum."))},
           exported="backbone", exporter="lightly's examples (which evaluate backbone)",
           markers=("projection_head.", "prediction_head.", "backbone_momentum."),
           heads=("projection_head.", "prediction_head.", "projection_head_momentum."), children=True,
           reads="lightly: backbone nn.Sequential(resnet children), bare or under state_dict"),
    # BYOL: lucidrains/byol-pytorch (byol_pytorch/byol_pytorch.py, read): BYOL(net) registers net,
    # online_encoder (NetWrapper: .net is the same module, + projector), target_encoder (an EMA
    # deepcopy) and online_predictor; its README saves the bare net (torchvision names).
    # deepmind/byol (JAX / haiku) is the byol_jax row below.
    Layout("byol", {"online": ((TOP, "online_encoder.net."), (TOP, "net."), (SD, "online_encoder.net.")),
                    "target": ((TOP, "target_encoder.net."), (SD, "target_encoder.net."))},
           exported="online", exporter="byol-pytorch (its README saves net, the online network)",
           markers=("online_predictor.", "target_encoder."),
           heads=("online_predictor.", "online_encoder.projector.", "target_encoder.projector.", "net.fc."),
           reads="BYOL (byol-pytorch learner): online_encoder.net."),
    # SwAV (and DeepCluster-v2): facebookresearch/swav main_swav.py saves {'state_dict': DDP
    # model.state_dict()} (src/resnet50.py: torchvision names + projection_head, prototypes); the
    # released swav_800ep_pretrain.pth.tar is that bare dict (hubconf.py, read, strips 'module.').
    Layout("swav", {"model": ((SD, ""), (TOP, ""))}, markers=("prototypes", "projection_head."),
           heads=("projection_head.", "prototypes"), reads="SwAV / DeepCluster-v2: (state_dict) module."),
    # VICReg: facebookresearch/vicreg main_vicreg.py (read) saves {'epoch', 'model': DDP VICReg
    # (backbone, projector), 'optimizer'} as model.pth and the bare backbone as resnet50.pth;
    # resnet.py (read) keeps torchvision's names (plus a parameter-free padding layer).
    Layout("vicreg", {"backbone": ((MODEL, "backbone."),)}, markers=("projector.",), heads=("projector.",),
           reads="VICReg checkpoint.pth: model module.backbone."),
    # Barlow Twins: facebookresearch/barlowtwins main.py (read): {'epoch', 'model': DDP BarlowTwins
    # (backbone = torchvision resnet50, fc Identity; projector; bn, an affine-free BatchNorm1d),
    # 'optimizer'}; the final resnet50.pth is the bare backbone (hubconf.py, read).
    Layout("barlowtwins", {"backbone": ((MODEL, "backbone."),)}, markers=("projector.", "bn.running_mean"),
           heads=("projector.", "bn."), reads="Barlow Twins checkpoint.pth: model module.backbone."),
    # SimSiam: facebookresearch/simsiam main_simsiam.py saves {'state_dict': DDP SimSiam}
    # (simsiam/builder.py, read: encoder = torchvision ResNet whose fc is the projector; predictor);
    # main_lincls.py keeps module.encoder. without fc.
    Layout("simsiam", {"encoder": ((SD, "encoder."),)}, markers=("predictor.",), heads=("predictor.",),
           reads="SimSiam: state_dict module.encoder."),
    # DenseCL: WXinlong/DenseCL (OpenSelfSup) openselfsup/models/densecl.py (read): encoder_q /
    # encoder_k = Sequential(backbone, neck), self.backbone = encoder_q[0] (so 'backbone.' and
    # 'encoder_q.0.' hold the same tensors), queue, queue2; its extract tool keeps 'backbone.'.
    Layout("densecl", {"query": ((SD, "backbone."), (SD, "encoder_q.0.")), "key": ((SD, "encoder_k.0."),)},
           exported="query", exporter="DenseCL's extract tool (backbone = encoder_q.0)",
           markers=("queue2", "queue2_ptr"),
           heads=("encoder_q.", "head.", "queue", "queue_ptr", "queue2"),
           reads="DenseCL: state_dict backbone. (= encoder_q.0.)"),
    # PixPro: zdaxie/PixPro main_pretrain.py saves {'opt', 'model': DDP PixPro (encoder,
    # encoder_k, projector(_k), predictor, value_transform), 'optimizer', 'scheduler', 'epoch'};
    # zdaxie/PixPro/transfer/detection/convert_pretrain_to_d2.py (read) keeps 'module.encoder.'.
    Layout("pixpro", {"encoder": ((MODEL, "encoder."),), "key": ((MODEL, "encoder_k."),)}, exported="encoder",
           exporter="PixPro's convert_pretrain_to_d2.py",
           markers=("projector_k.", "value_transform."),
           heads=("projector.", "projector_k.", "predictor.", "value_transform."),
           reads="PixPro: model module.encoder."),
    # deepmind/byol (JAX / haiku): a pickle of haiku parameters and BN state, read by
    # transfer/haiku_names.py (its docstring names the sources read and what is not read) into
    # torchvision names and OIHW kernels; online / target are the two encoders.
    Layout("byol_jax", {"online": ((("online_params",), ""),), "target": ((("target_params",), ""),)},
           exported="online", exporter=BYOL_EXPORT, markers=("experiment_state", "online_state", "target_state"),
           heads=("projector", "predictor", "classifier"), reader=read_byol_jax,
           reads="deepmind/byol (JAX): pretrain_res50x1.pkl, experiment_state online_params / online_state"),
)

BY_NAME = {layout.name: layout for layout in LAYOUTS}
