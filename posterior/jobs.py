"""The job file of ``posterior run``: its declared schema, and the problem built from it.

:data:`SCHEMA` declares every section and field of a job (its type, default, one line of description
and an example). :func:`build` checks a job read from TOML against it and returns the objects to run
(prior, operator, noise, measurement and/or truth, sampler, run settings); every value that cannot run
is a :class:`ConfigError` whose message names the field. ``docs/cli.md`` holds the table of
:func:`field_table`, written by ``python benchmarks/render_docs.py``, so the page and the validation
cannot drift.

torch, numpy and the library are imported inside the functions: ``posterior --help`` imports this
module's schema without them.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A job that cannot run; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a job: ``kind`` (int, float, str, bool, range, floats, float or file), ``default``
    (None: none; ``required``: the field must be given), one line of ``description`` and an ``example``."""

    kind: str
    default: Any
    description: str
    example: str


REQUIRED = "required"
SECTIONS = {  # section -> one line; the order of the docs table
    "prior": "the prior: a bundled name, a weight file, a diffusers UNet2DModel folder, or your own factory",
    "operator": "the forward model; `[[operator]]` tables are composed, applied in order to x",
    "noise": "the measurement noise model (the likelihood)",
    "measurement": "your measurement y; without it y is simulated from the truth",
    "truth": "the true image: scores in the report, and y simulated from it without a measurement",
    "sampler": "the sampler and its fields",
    "run": "how many draws, and where they go",
}
SCHEMA: dict[str, dict[str, Field] | None] = {
    "prior": {
        "name": Field(
            "str",
            None,
            "a bundled prior (digits, phantoms, us-tissue, us-haze) or a weight file "
            "written by `posterior train`",
            '"phantoms"',
        ),
        "factory": Field(
            "str",
            None,
            "`module:function` returning a `posterior.priors.DiffusionPrior`, "
            "imported from the job file's folder or the Python path",
            '"my_prior:make_prior"',
        ),
        "diffusers": Field(
            "str",
            None,
            "a local folder (relative to the job file's) holding a diffusers `UNet2DModel` and its "
            "`scheduler_config.json` (a DDPM-type schedule), or a pipeline folder with `unet/` and "
            "`scheduler/`; needs `pip install 'posterior[diffusers]'`",
            '"ddpm-digits"',
        ),
        "range": Field(
            "range",
            None,
            "the prior's data range [lo, hi]; needed for a measurement or truth "
            "`range` when the prior is not a bundled one (diffusers models: usually [-1, 1])",
            "[0.0, 1.0]",
        ),
    },
    "operator": {
        "type": Field(
            "str",
            None,
            "inpainting, blur, downsample, radon, mri, phase_retrieval, matrix, haze_link or identity "
            "(or give `function`)",
            '"radon"',
        ),
        "function": Field(
            "str",
            None,
            "`module:function` returning an `operators.Operator`; called with no arguments",
            '"my_model:make_operator"',
        ),
        "top": Field("int", None, "inpainting: the hidden box's first row", "0"),
        "left": Field("int", None, "inpainting: the hidden box's first column", "0"),
        "height": Field("int", None, "inpainting: the hidden box's rows", "8"),
        "width": Field("int", None, "inpainting: the hidden box's columns", "16"),
        "fraction": Field(
            "float", None, "inpainting: observe this fraction of pixels, drawn at random", "0.3"
        ),
        "seed": Field("int", 0, "inpainting `fraction`, mri `acceleration`: seed of the random mask", "1"),
        "mask": Field(
            "str",
            None,
            "inpainting: observed pixels (in_shape); mri: k-space mask (H, W); a .npy or .safetensors file",
            '"mask.npy"',
        ),
        "kernel": Field(
            "str",
            '"gaussian"',
            "blur: gaussian, motion, uniform, or a .npy or .safetensors file holding a 2-D kernel",
            '"motion"',
        ),
        "std": Field("float", None, "blur gaussian: standard deviation in pixels", "1.5"),
        "size": Field("int", None, "blur uniform: kernel side (required); gaussian: optional side", "3"),
        "length": Field("float", None, "blur motion: length in pixels", "5.0"),
        "angle": Field("float", 0.0, "blur motion: direction in degrees, counter-clockwise from +x", "45.0"),
        "boundary": Field("str", '"circular"', "blur: circular or reflect", '"reflect"'),
        "factor": Field("int", None, "downsample: block side averaged into one pixel", "2"),
        "angles": Field("floats", None, "radon: projection angles in degrees", "[0.0, 45.0, 90.0]"),
        "count": Field("int", None, "radon: that many angles evenly spaced over `angle_range`", "30"),
        "angle_range": Field(
            "range", "[0.0, 180.0]", "radon `count`: [first, end) in degrees", "[0.0, 180.0]"
        ),
        "detectors": Field("int", None, "radon: detector bins (default: the image side)", "46"),
        "acceleration": Field(
            "float", None, "mri: keep 1/acceleration of the k-space columns, at random", "4.0"
        ),
        "center_fraction": Field(
            "float", 0.08, "mri `acceleration`: fraction of central columns always kept", "0.1"
        ),
        "coils": Field(
            "str",
            None,
            "mri: coil sensitivity maps (C, H, W), complex or real, in a .npy or "
            ".safetensors file (default: one coil)",
            '"coils.npy"',
        ),
        "matrix": Field(
            "str",
            None,
            "matrix: an (m, d) matrix acting on the flattened input, in a .npy or .safetensors file",
            '"A.npy"',
        ),
        "oversampling": Field(
            "float",
            2.0,
            "phase_retrieval: y = |FFT(x zero-padded to ceil(oversampling H) x ceil(oversampling W))|; >= 1",
            "2.0",
        ),
        "eps": Field("float", 1e-12, "phase_retrieval: smoothing of the modulus near zero; > 0", "1e-6"),
        "gamma": Field(
            "float",
            1.0,
            "haze_link: haze weight (> 0) in C(C^-1(tissue) + gamma C^-1(haze)), on a prior of the "
            "two sources stacked as channels (2C, H, W)",
            "0.5",
        ),
        "mu": Field("float", 255.0, "haze_link: the mu-law parameter (> 0)", "255.0"),
    },
    "noise": {
        "type": Field(
            "str", '"gaussian"', "gaussian, poisson, laplace or student_t (or give `model`)", '"poisson"'
        ),
        "sigma": Field(
            "float or file",
            None,
            "gaussian: standard deviation, a number or a file of per-element values (broadcast to y)",
            "0.05",
        ),
        "gain": Field("float", 1.0, "poisson: expected counts per unit of A(x)", "100.0"),
        "b": Field("float", None, "laplace: scale", "0.05"),
        "df": Field("float", None, "student_t: degrees of freedom", "3.0"),
        "scale": Field("float", 1.0, "student_t: scale", "0.05"),
        "model": Field(
            "str",
            None,
            "`module:function`, a Pyro model of z = A(x), wrapped in `operators.PyroLikelihood`",
            '"my_model:likelihood"',
        ),
        "site": Field("str", '"y"', "`model`: the name of the observed sample site", '"counts"'),
    },
    "measurement": {
        "file": Field(
            "str",
            None,
            "y: .npy, .safetensors, or an image (.png, .tif, .jpg, read by Pillow) of "
            "the operator's output shape",
            '"sinogram.npy"',
        ),
        "files": Field(
            "str",
            None,
            "many measurements: a glob relative to the job file's folder (sorted; each file as `file`); "
            "one problem and one output folder `<output>/<stem>/` per file, and a summary",
            '"scans/*.npy"',
        ),
        "stacked": Field(
            "bool",
            "false",
            "many measurements in one `file`: its leading axis indexes them, one output folder "
            "`<output>/<stem>_<k>/` each",
            "true",
        ),
        "key": Field("str", None, "the tensor's name in a .safetensors file of several", '"y"'),
        "range": Field(
            "range",
            None,
            "the file's value range [lo, hi], mapped onto the prior's data range; "
            "values outside are refused; required for images; only for operators in image units "
            "(inpainting, blur, downsample, identity)",
            "[0, 255]",
        ),
    },
    "truth": {
        "file": Field(
            "str", None, "the true image (the prior's event shape), as `measurement.file`", '"truth.npy"'
        ),
        "files": Field(
            "str",
            None,
            "with `measurement.files`: a glob of as many truths, paired with the measurements in sorted order",
            '"truths/*.npy"',
        ),
        "key": Field("str", None, "as `measurement.key`", '"x"'),
        "range": Field("range", None, "as `measurement.range`", "[0, 255]"),
        "dataset": Field(
            "str", None, "a held-out image of digits or phantoms (instead of `file`)", '"phantoms"'
        ),
        "index": Field("int", 0, "`dataset`: which held-out image", "3"),
    },
    "sampler": None,  # name + the sampler class's own fields, checked against its dataclass
    "run": {
        "num_samples": Field("int", 16, "draws per chain (particles per SMC run)", "32"),
        "chains": Field("int", 4, "chains (independent SMC runs)", "8"),
        "output": Field("str", '"runs/JOB"', "output folder (JOB: the job file's name)", '"runs/ct"'),
        "checkpoint_every": Field("int", 0, "write checkpoint.pt every that many steps (0: never)", "10"),
        "max_batch": Field("int", 0, "network micro-batches of at most that many rows (0: all)", "256"),
        "batch": Field(
            "int",
            1,
            "many measurements: groups of that many consecutive measurements, each one batched "
            "sampler call; a group's seed is `--seed` + its first index",
            "4",
        ),
    },
}
SAMPLER_ROWS = (  # the sampler section has the fields of the class it names
    ("name", Field("str", REQUIRED, "any class of `posterior.samplers` (AFDPS, DPS, MCGdiff, ...)", '"DPS"')),
    ("*", Field("", None, "the sampler's own fields (`steps`, `step_size`, ...): see its docstring", "100")),
)
OPERATOR_FIELDS = {  # operator type -> (required fields (one of each tuple), optional fields)
    "inpainting": ((("top", "fraction", "mask"),), {"left", "height", "width", "seed"}),
    "blur": ((), {"kernel", "std", "size", "length", "angle", "boundary"}),
    "downsample": ((("factor",),), set()),
    "radon": ((("angles", "count"),), {"angle_range", "detectors"}),
    "mri": ((("mask", "acceleration"),), {"center_fraction", "seed", "coils"}),
    "matrix": ((("matrix",),), set()),
    "phase_retrieval": ((), {"oversampling", "eps"}),
    "haze_link": ((), {"gamma", "mu"}),
    "identity": ((), set()),
}
NOISE_FIELDS = {"gaussian": {"sigma"}, "poisson": {"gain"}, "laplace": {"b"}, "student_t": {"df", "scale"}}
DATA_RANGES = {  # bundled prior -> its data range, from its recipe (posterior.priors.pretrained, posterior.data)
    "digits": (0.0, 1.0),
    "phantoms": (0.0, 1.0),
    "us-tissue": (-1.0, 1.0),  # mu-law companded RF
    "us-haze": (-1.0, 1.0),
}
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def field_table() -> list[str]:
    """The Markdown table of every field of :data:`SCHEMA` (``docs/cli.md``, ``job-fields``)."""
    lines = ["| field | type | default | description | example |", "|---|---|---|---|---|"]
    for section, note in SECTIONS.items():
        lines.append(f"| **[{section}]** | | | {note} | |")
        rows = SAMPLER_ROWS if SCHEMA[section] is None else SCHEMA[section].items()
        for key, f in rows:
            default = "" if f.default is None else str(f.default)
            lines.append(f"| `{section}.{key}` | {f.kind} | {default} | {f.description} | `{f.example}` |")
    return lines


# -- reading values ------------------------------------------------------------------------------
def show(value) -> str:
    """``value`` as it would be written in TOML (strings quoted), for messages."""
    return json.dumps(value) if isinstance(value, str | bool) else repr(value)


def typed(key: str, value, kind: str):
    """``value`` read from the job as ``kind`` (the rules of :mod:`operators.checks`, ints accepted
    for floats), or a ConfigError naming ``key``."""
    from operators.checks import as_float, as_int

    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {show(value)}")
    if kind == "str" or kind == "float or file" and isinstance(value, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {show(value)}")
    try:
        if kind in ("floats", "range"):
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{key} must be a list of numbers, got {show(value)}")
            values = [as_float(v, key) for v in value]
            if kind == "range" and (len(values) != 2 or not values[0] < values[1]):
                raise ConfigError(f"{key} must be [lo, hi] with lo < hi, got {show(value)}")
            return values
        return as_int(value, key) if kind == "int" else as_float(value, key)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def check_section(section: str, table, prefix: str | None = None) -> dict:
    """``table`` with every field known to ``SCHEMA[section]`` and of its type; a ConfigError naming it."""
    prefix = prefix or section
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix}: expected a table [{section}], got {show(table)}")
    allowed = SCHEMA[section]
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{prefix}.{key}: unknown field; expected one of {sorted(allowed)}")
        table[key] = typed(f"{prefix}.{key}", table[key], allowed[key].kind)
    return table


def load_callable(spec: str, key: str, folder: Path):
    """The object ``module:name`` names, imported with ``folder`` (the job file's) first on the path."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: expected 'module:function', got {show(spec)}")
    sys.path.insert(0, str(folder.resolve()))
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ConfigError(f"{key}: cannot import {module_name!r}: {type(err).__name__}: {err}") from err
    finally:
        sys.path.remove(str(folder.resolve()))
    found = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{key}: module {module_name!r} has no {attr!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(f"{key}: {spec} is not callable")
    return found


def call(spec: str, key: str, folder: Path):
    """Call the function ``spec`` names with no arguments; any error it raises is about ``key``."""
    function = load_callable(spec, key, folder)
    try:
        return function()
    except Exception as err:
        raise ConfigError(f"{key}: {spec}() raised {type(err).__name__}: {err}") from err


def load_array(name: str, key: str, folder: Path, tensor_key: str | None = None):
    """The array in file ``name`` (relative to ``folder``) as a float64 tensor (complex kept), or a
    ConfigError naming ``key``: ``.npy`` (numpy), ``.safetensors`` (its only tensor, or ``tensor_key``),
    or an image read by Pillow (a grey image as ``(1, H, W)``, a colour one as ``(C, H, W)``)."""
    import numpy as np
    import torch

    path = folder / name
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as file:
                if file.read(6) != b"\x93NUMPY":
                    raise ConfigError(f"{key}: {path}: not a .npy file (it lacks numpy's header)")
            array = np.load(path, allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
            if tensor_key is None and len(tensors) != 1:
                raise ConfigError(f"{key}: {name} holds tensors {sorted(tensors)}; name one with its `key`")
            if tensor_key is not None and tensor_key not in tensors:
                raise ConfigError(f"{key}: {name} has no tensor {tensor_key!r}; it holds {sorted(tensors)}")
            array = tensors[tensor_key or next(iter(tensors))].numpy()
        elif suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                if image.mode == "P":  # palette indices: the colours they stand for
                    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                if image.mode not in ("L", "I;16", "I", "F", "RGB", "RGBA"):
                    raise ConfigError(
                        f"{key}: {name}: an image of mode {image.mode!r}; save it as 8- or 16-bit grey, "
                        "float or RGB"
                    )
                array = np.asarray(image)
            array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        else:
            raise ConfigError(
                f"{key}: {name}: expected a .npy, .safetensors or image file ({', '.join(IMAGE_SUFFIXES)})"
            )
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path}: no such file") from None
    except Exception as err:
        raise ConfigError(
            f"{key}: {path}: cannot read it ({type(err).__name__}: {' '.join(str(err).split())})"
        ) from err
    if array.dtype.kind not in "biufc":
        raise ConfigError(f"{key}: {name} holds {array.dtype} values, expected numbers")
    if array.size == 0:
        raise ConfigError(f"{key}: {name} is empty")
    tensor = torch.from_numpy(np.array(array, copy=True))  # writable, contiguous
    tensor = tensor.to(torch.complex128 if tensor.is_complex() else torch.float64)
    if not torch.isfinite(torch.view_as_real(tensor) if tensor.is_complex() else tensor).all():
        raise ConfigError(f"{key}: {name} contains NaN or inf")
    return tensor


# -- building the problem --------------------------------------------------------------------------
def _build_operator(table: dict, where: str, shape: tuple[int, ...], folder: Path):
    """One operator from its table, acting on images of ``shape``."""
    import torch

    import operators as ops
    from operators.checks import as_float

    if "function" in table:
        if set(table) != {"function"}:
            raise ConfigError(
                f"{where}: `function` takes no other fields, got {sorted(set(table) - {'function'})}"
            )
        operator = call(table["function"], f"{where}.function", folder)
        if not isinstance(operator, ops.Operator):
            raise ConfigError(
                f"{where}.function: returned {type(operator).__name__}, expected an operators.Operator"
            )
        return operator
    kind = table.get("type")
    if kind is None:
        raise ConfigError(f"{where}.type: missing (or give {where}.function)")
    if kind not in OPERATOR_FIELDS:
        raise ConfigError(
            f"{where}.type: unknown operator {kind!r}; expected one of {sorted(OPERATOR_FIELDS)}"
        )
    required, optional = OPERATOR_FIELDS[kind]
    given = set(table) - {"type"}
    allowed = {k for group in required for k in group} | optional
    if not given <= allowed:
        raise ConfigError(f"{where}: {kind} takes fields {sorted(allowed)}, got {sorted(given)}")
    for group in required:
        if sum(k in table for k in group) != 1:
            raise ConfigError(f"{where}: {kind} needs exactly one of {list(group)}, got {sorted(given)}")
    c = table

    def forbid(*keys):
        extra = sorted(set(keys) & given)
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: not used by this {kind} operator")

    def array(k):
        return load_array(c[k], f"{where}.{k}", folder)

    def from_file(k, build):
        """``build()`` for an operator made from the file of field ``k``: its errors name that field."""
        try:
            return build()
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{where}.{k}: {c[k]}: {err}") from err

    if kind == "inpainting":
        if "top" in c:
            missing = [k for k in ("left", "height", "width") if k not in c]
            if missing:
                raise ConfigError(f"{where}.{missing[0]}: missing (the box needs top, left, height, width)")
            forbid("seed")
            return ops.Inpainting.box(shape, c["top"], c["left"], c["height"], c["width"])
        forbid("left", "height", "width")
        if "fraction" in c:
            return ops.Inpainting.random(shape, c["fraction"], seed=c.get("seed", 0))
        forbid("seed")
        mask = array("mask")
        if tuple(mask.shape) != tuple(shape):
            raise ConfigError(
                f"{where}.mask: shape {tuple(mask.shape)}, expected the image shape {tuple(shape)}"
            )
        return from_file("mask", lambda: ops.Inpainting(mask))
    if kind == "blur":
        name, boundary = c.get("kernel", "gaussian"), c.get("boundary", "circular")
        uses = {"gaussian": {"std", "size"}, "motion": {"length", "angle"}, "uniform": {"size"}}.get(
            name, set()
        )
        extra = sorted(given - uses - {"kernel", "boundary"})
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: not used by the {name!r} kernel")
        if name == "gaussian":
            if "std" not in c:
                raise ConfigError(f"{where}.std: missing (the gaussian kernel's standard deviation)")
            return ops.Blur.gaussian(shape, std=c["std"], size=c.get("size"), boundary=boundary)
        if name == "motion":
            if "length" not in c:
                raise ConfigError(f"{where}.length: missing (the motion kernel's length)")
            return ops.Blur.motion(shape, c["length"], c.get("angle", 0.0), boundary=boundary)
        if name == "uniform":
            if "size" not in c:
                raise ConfigError(f"{where}.size: missing (the uniform kernel's side)")
            return ops.Blur.uniform(shape, c["size"], boundary=boundary)
        kernel = array("kernel")
        return from_file("kernel", lambda: ops.Blur(kernel, shape, boundary=boundary))
    if kind == "downsample":
        return ops.Downsample(shape, c["factor"])
    if kind == "radon":
        if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
            raise ConfigError(f"{where}: radon needs square images (1, N, N), got {tuple(shape)}")
        if "angles" in c:
            forbid("angle_range")
            angles = c["angles"]
        else:
            if c["count"] < 1:
                raise ConfigError(f"{where}.count: must be a positive int, got {c['count']}")
            lo, hi = c.get("angle_range", (0.0, 180.0))
            angles = [lo + (hi - lo) * k / c["count"] for k in range(c["count"])]
        return ops.Radon(angles, shape[-1], c.get("detectors"))
    if kind == "mri":
        if len(shape) != 3 or shape[0] != 1:
            raise ConfigError(f"{where}: mri needs images (1, H, W), got {tuple(shape)}")
        if "mask" in c:
            forbid("center_fraction", "seed")
            mask = array("mask")
            if tuple(mask.shape) != tuple(shape[1:]):
                raise ConfigError(
                    f"{where}.mask: shape {tuple(mask.shape)}, expected the k-space shape {shape[1:]}"
                )
        else:
            mask = ops.MRI.cartesian_mask(
                shape[1:], c["acceleration"], c.get("center_fraction", 0.08), c.get("seed", 0)
            )
        coils = array("coils") if "coils" in c else None
        return from_file("coils" if "coils" in c else "mask", lambda: ops.MRI(mask, coils))
    if kind == "matrix":
        matrix = array("matrix")
        if matrix.dim() != 2 or matrix.shape[1] != math.prod(shape):
            raise ConfigError(
                f"{where}.matrix: shape {tuple(matrix.shape)}, expected (m, {math.prod(shape)}) for inputs of shape {tuple(shape)}"
            )
        return ops.Matrix(matrix.to(torch.float64), shape)

    def bounded(k, default, **bound):  # the field k of c, within bound (gt= or ge=), or a ConfigError
        try:
            return as_float(c.get(k, default), f"{where}.{k}", **bound)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    if kind == "phase_retrieval":
        if len(shape) != 3:
            raise ConfigError(f"{where}: phase_retrieval needs images (C, H, W), got {tuple(shape)}")
        return ops.PhaseRetrieval(
            shape, bounded("oversampling", 2.0, ge=1), bounded("eps", 1e-12, gt=0)
        )
    if kind == "haze_link":
        if len(shape) != 3 or shape[0] % 2:
            raise ConfigError(
                f"{where}: haze_link needs a prior of the two sources (tissue, haze) stacked as channels "
                f"(2C, H, W), e.g. a StackedPrior from prior.factory; got {tuple(shape)}"
            )
        source = (shape[0] // 2, *shape[1:])
        return ops.HazeLink(source, bounded("gamma", 1.0, gt=0), bounded("mu", 255.0, gt=0))
    return ops.Identity(shape)


def build_operator(config, shape: tuple[int, ...], folder: Path, prior_field: str = "prior.name"):
    """The operator of ``config`` (a table, or a list of tables applied in order) on inputs of ``shape``,
    the event shape of the prior that ``prior_field`` gives."""
    tables = config if isinstance(config, list) else [config]
    if not tables:
        raise ConfigError("operator: an empty list; give at least one operator")
    operator = None
    for k, table in enumerate(tables):
        where = "operator" if len(tables) == 1 else f"operator[{k}]"
        check_section("operator", table, where)
        current = shape if operator is None else operator.out_shape
        try:
            step = _build_operator(table, where, tuple(current), folder)
        except (ValueError, TypeError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"{where}: {err}") from err
        if tuple(step.in_shape) != tuple(current) and operator is None:
            raise ConfigError(
                f"{prior_field}: the prior's event shape {tuple(current)} does not fit the input shape "
                f"{tuple(step.in_shape)} of {where}"
            )
        if tuple(step.in_shape) != tuple(current):
            raise ConfigError(
                f"{where}: takes inputs of shape {tuple(step.in_shape)}, but operator[{k - 1}] gives {tuple(current)}"
            )
        operator = step if operator is None else step @ operator
    return operator


def build_noise(table: dict, folder: Path):
    """The noise model of ``[noise]``."""
    import operators as ops

    if "model" in table:
        extra = sorted(set(table) - {"model", "site"})
        if extra:
            raise ConfigError(f"noise.{extra[0]}: not used with noise.model")
        model = load_callable(table["model"], "noise.model", folder)
        return ops.PyroLikelihood(model, site=table.get("site", "y"))
    kind = table.get("type", "gaussian")
    if kind not in NOISE_FIELDS:
        raise ConfigError(f"noise.type: unknown noise {kind!r}; expected one of {sorted(NOISE_FIELDS)}")
    extra = sorted(set(table) - NOISE_FIELDS[kind] - {"type"})
    if extra:
        raise ConfigError(
            f"noise.{extra[0]}: not used by {kind} noise (it takes {sorted(NOISE_FIELDS[kind])})"
        )

    def positive(key: str, default=None):
        value = table.get(key, default)
        if value is None:
            raise ConfigError(f"noise.{key}: missing ({kind} noise)")
        if isinstance(value, str):
            value = load_array(value, f"noise.{key}", folder)
            if value.is_complex() or not bool((value > 0).all()):
                raise ConfigError(f"noise.{key}: {table[key]} must hold positive real values")
            return value
        if not value > 0:
            raise ConfigError(f"noise.{key}: must be > 0, got {value}")
        return value

    if kind == "gaussian":
        return ops.GaussianNoise(positive("sigma"))
    if kind == "poisson":
        return ops.PoissonNoise(positive("gain", 1.0))
    if kind == "laplace":
        return ops.LaplaceNoise(positive("b"))
    return ops.StudentTNoise(positive("df"), positive("scale", 1.0))


def matching(pattern: str, key: str, folder: Path) -> list[str]:
    """The files that the glob ``pattern`` (field ``key``) matches, relative to ``folder`` (the job
    file's), sorted; at least one, or a ConfigError naming ``key``."""
    names = sorted(  # relative to folder (glob characters in the folder's own path are not a pattern)
        p for p in glob.glob(pattern, root_dir=folder, recursive=True) if (folder / p).is_file()
    )
    if not names:
        raise ConfigError(f"{key}: {show(pattern)} matches no file in {folder.resolve()}")
    return names


IMAGE_UNITS = ("inpainting", "blur", "downsample", "identity")  # y in x's units: a range maps both alike


def in_image_units(operator) -> bool:
    """Whether the job's ``operator`` table (or list of them) outputs values in the image's units, so
    that an affine map of the data range is the same on ``y`` as on ``x``."""
    tables = operator if isinstance(operator, list) else [operator]
    return all(isinstance(t, dict) and t.get("type") in IMAGE_UNITS and "function" not in t for t in tables)


def data_file(
    table: dict,
    section: str,
    folder: Path,
    data_range,
    shape,
    what: str,
    name: str | None = None,
    key: str = "file",
    stacked: bool = False,
):
    """The tensor of ``[section] file`` (``measurement`` or ``truth``), or of file ``name`` of the glob
    ``[section] files`` when ``key`` is ``files``: of ``shape`` (``what`` names it), inside its declared
    ``range``, mapped onto the prior's ``data_range``. ``stacked``: the file holds measurements of
    ``shape`` along its leading axis."""
    name = name or table[key]
    tensor = load_array(name, f"{section}.{key}", folder, table.get("key"))
    if Path(name).suffix.lower() in IMAGE_SUFFIXES and "range" not in table:
        raise ConfigError(f"{section}.range: missing; an image file needs its value range, e.g. [0, 255]")
    if stacked and tuple(tensor.shape[1:]) != tuple(shape):
        raise ConfigError(
            f"{section}.{key}: {name} has shape {tuple(tensor.shape)}, expected (n, *{what}) "
            f"= (n, {', '.join(map(str, shape))}) with {section}.stacked"
        )
    if not stacked and tuple(tensor.shape) != tuple(shape):
        raise ConfigError(
            f"{section}.{key}: {name} has shape {tuple(tensor.shape)}, expected {what} {tuple(shape)}"
        )
    if "range" in table:
        lo, hi = table["range"]
        if tensor.is_complex():
            raise ConfigError(f"{section}.range: {name} holds complex values; a range needs real ones")
        low, high = float(tensor.min()), float(tensor.max())
        if low < lo or high > hi:
            raise ConfigError(
                f"{section}.range: {name} has values in [{low:.4g}, {high:.4g}], outside the declared [{lo:g}, {hi:g}]"
            )
        if data_range is None:
            raise ConfigError(
                f"{section}.range: the prior's data range is unknown; give prior.range = [lo, hi]"
            )
        a, b = data_range
        tensor = a + (tensor - lo) * ((b - a) / (hi - lo))
    if tensor.is_complex():
        raise ConfigError(f"{section}.{key}: {name} holds complex values; expected real ones")
    return tensor


def build_prior(table: dict, folder: Path, device: str):
    """The prior of ``[prior]``, its name for the report, and its data range (None where unknown)."""
    import posterior as post

    given = [k for k in ("name", "factory", "diffusers") if k in table]
    if len(given) != 1:
        raise ConfigError(
            f"prior: give exactly one of prior.name, prior.factory and prior.diffusers, got {given or 'none'}"
        )
    (key,) = given
    if key == "diffusers":
        prior = diffusers_prior(table["diffusers"], folder, device)
        label = table["diffusers"]
    elif key == "factory":
        prior = call(table["factory"], "prior.factory", folder)
        if not isinstance(prior, post.priors.DiffusionPrior):
            raise ConfigError(
                f"prior.factory: returned {type(prior).__name__}, expected a posterior.priors.DiffusionPrior"
            )
        label = table["factory"]
    else:
        name = table["name"]
        candidate = folder / name
        source = str(candidate) if name not in DATA_RANGES and candidate.exists() else name
        try:  # any failure to load the named prior (a bad weight file, a missing one) is about prior.name
            prior = post.priors.pretrained(source, device=device)
        except Exception as err:
            raise ConfigError(f"prior.name: {err}") from err
        label = name
    data_range = table.get("range") or DATA_RANGES.get(table.get("name"))
    return prior, label, (tuple(data_range) if data_range else None), key


def diffusers_prior(name: str, folder: Path, device: str):
    """The prior of ``prior.diffusers``: a local diffusers ``UNet2DModel`` folder (relative to ``folder``,
    the job file's) read by :func:`posterior.priors.diffusers_adapter.from_diffusers`."""
    path = folder / name
    if not path.is_dir():
        raise ConfigError(f"prior.diffusers: {path}: no such folder")
    if importlib.util.find_spec("diffusers") is None:
        raise ConfigError("prior.diffusers: needs the diffusers package; install posterior[diffusers]")
    for config in (path / "config.json", path / "unet" / "config.json"):
        if config.is_file():
            try:
                found = json.loads(config.read_text()).get("_class_name")
            except (ValueError, AttributeError) as err:
                raise ConfigError(f"prior.diffusers: {config}: cannot read it ({err})") from err
            if found != "UNet2DModel":
                raise ConfigError(f"prior.diffusers: {config} holds a {found}, expected a UNet2DModel")
            break
    else:
        raise ConfigError(
            f"prior.diffusers: {path}: no UNet2DModel config.json in it or in its unet/ subfolder"
        )
    from posterior.priors.diffusers_adapter import from_diffusers

    try:
        return from_diffusers(path, device=device)
    except Exception as err:
        raise ConfigError(f"prior.diffusers: {' '.join(str(err).split())}") from err
