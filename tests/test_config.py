import pytest

from mocobench.config import ConfigError, differing_keys
from moco_configs import write_moco_voc_configs
from mocobench.transfer.config import detection_defaults, load_detection_config


def write(path, text):
    path.write_text(text)
    return path


def test_base_chain_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "MODEL:\n  RESNETS:\n    NORM: naiveSyncBN\nSOLVER:\n  BASE_LR: 0.02\n")
    child = write(tmp_path / "child.yaml",
                  "_BASE_: base.yaml\nINPUT:\n  MIN_SIZE_TRAIN: (480, 512)\nSOLVER:\n  MAX_ITER: 48000\n")
    cfg = load_detection_config(child, ["SOLVER.BASE_LR", "0.01", "MODEL.WEIGHTS", "w.pkl"])
    assert cfg.MODEL.RESNETS.NORM == "naiveSyncBN"
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (480, 512)
    assert cfg.SOLVER.MAX_ITER == 48000 and cfg.SOLVER.BASE_LR == 0.01
    assert cfg.MODEL.WEIGHTS == "w.pkl"
    diff = differing_keys(cfg, detection_defaults())
    assert set(diff) == {"MODEL.RESNETS.NORM", "SOLVER.BASE_LR", "INPUT.MIN_SIZE_TRAIN",
                         "SOLVER.MAX_ITER", "MODEL.WEIGHTS"}


def test_misspelled_key_names_key_and_file(tmp_path):
    write(tmp_path / "base.yaml", "SOLVER:\n  BASE_RL: 0.02\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_detection_config(child)
    msg = str(e.value)
    assert "SOLVER.BASE_RL" in msg and str(tmp_path / "base.yaml") in msg and "BASE_LR" in msg


def test_unknown_override_and_bad_type(tmp_path):
    with pytest.raises(ConfigError, match="SOLVER.MAXITER"):
        load_detection_config(None, ["SOLVER.MAXITER", "10"])
    with pytest.raises(ConfigError, match="KEY VALUE"):
        load_detection_config(None, ["SOLVER.MAX_ITER"])
    bad = write(tmp_path / "bad.yaml", "SOLVER:\n  MAX_ITER: [1, 2]\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_detection_config(bad)


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_detection_config(tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_detection_config(bad)


def test_moco_authors_voc_config_loads_unchanged(tmp_path):
    cfg = load_detection_config(write_moco_voc_configs(tmp_path))
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" and cfg.MODEL.RESNETS.NORM == "naiveSyncBN"
    assert tuple(cfg.DATASETS.TRAIN) == ("voc_2007_trainval", "voc_2012_trainval")
    assert tuple(cfg.SOLVER.STEPS) == (18000, 22000) and cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.SOLVER.BASE_LR == 0.02
