"""Conversions of an export into formats other engines serve without our code: native transformers classes
(`native`) and GGUF for llama.cpp (`gguf`), both from one reading of the export (`common`). The command line is
`cli.main` (`victorian-gpt convert`); see docs/conversion.md.

    to_transformers(export, output, *, revision=None, overwrite=False) -> Path
    to_gguf(export, output, *, outtype="f32", revision=None, overwrite=False) -> Path
"""

from .common import NATIVE_CLASSES, ConversionError, Export, native_architecture, native_tensors, read_export
from .gguf import OUTTYPES, to_gguf
from .native import native_config, to_transformers

__all__ = ["NATIVE_CLASSES", "OUTTYPES", "ConversionError", "Export", "native_architecture", "native_config",
           "native_tensors", "read_export", "to_gguf", "to_transformers"]
