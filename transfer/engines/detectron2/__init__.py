"""The reference engine: the same detection configs run through detectron2 itself
(get_cfg + merge, DefaultTrainer, detectron2's evaluators), writing the same run dir as the
torchvision engine. detectron2 is optional: nothing here is imported by ``import
mocobench`` or ``import transfer``; ``require_detectron2`` turns its absence into one line
saying how to install it.
"""

from __future__ import annotations

from mocobench import UserError

INSTALL_HINT = ("install it from its public source per its INSTALL.md, e.g. "
                "python -m pip install 'git+https://github.com/facebookresearch/detectron2.git' "
                "(with 'iopath<0.1.10' and 'setuptools<81')")


def require_detectron2(option: str = "--engine detectron2", alternative: str = ", or use --engine torchvision") -> None:
    """UserError naming ``option`` with install instructions unless detectron2 (and its model zoo) import."""
    try:
        import detectron2  # noqa: F401
        from detectron2.engine import DefaultTrainer  # noqa: F401
    except ImportError as e:
        raise UserError(f"{option}: detectron2 is not importable ({e}); {INSTALL_HINT}{alternative}") from None
