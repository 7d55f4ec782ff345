"""What a model file is, read from its bytes, never from its name: data, which the explorer reads without
running anything from the file, or a program, which runs code from the file as it loads or runs.

Data: safetensors; a PyTorch checkpoint read with `torch.load(weights_only=True)` (tensors and plain
containers only); ONNX with operators from the standard domains and no external data files.
Programs: TorchScript (its archive carries code that `torch.jit.load` runs, `__setstate__` included), an
exported program (`.pt2`, a graph of arbitrary operators), and a pickle of Python objects. The explorer
refuses programs unless the user trusts the file explicitly on the command line (`--trust-code`, as
Hugging Face's `trust_remote_code`); the web page never loads one.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from explorer.core.paths import user_file

if TYPE_CHECKING:  # for the annotations: the functions import it when they run
    import onnx

DATA_FORMATS = ("safetensors", "state_dict", "onnx")
PROGRAMS = {"torchscript": "a TorchScript program", "exported": "an exported program (torch.export, .pt2)",
            "pickle": "a Python pickle"}
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
EXPECTED = ("safetensors, a PyTorch state_dict checkpoint (.pt/.pth) or ONNX; TorchScript and exported programs "
            "only from the command line with --trust-code")


def program_refusal(shown: str, fmt: str) -> ValueError:
    """The one line that refuses a program: the format, why, and the way out."""
    return ValueError(f"model file {shown!r} is {PROGRAMS[fmt]}: loading it would run code from the file, so it "
                      "is refused. Save its weights with safetensors or export it to ONNX; or, if you trust its "
                      "author, pass --trust-code on the command line (the web page never loads programs)")


def detect_format(path: str | os.PathLike[str], shown: str | None = None, parse_onnx: bool = True) -> str:
    """safetensors | state_dict | torchscript | exported | pickle | onnx, from the file's bytes. ONNX has no
    magic number: it is told by parsing the whole file, which takes some 80 times the file's size for a graph
    of millions of empty nodes, so a process that must not run out of memory passes `parse_onnx=False` and gets
    "onnx" for any file that is none of the others, to be parsed (and refused) under a memory limit."""
    p = Path(path)
    shown = shown or p.name
    size = user_file(p, "model file", shown)  # a pipe would hold the open below; a device never ends
    with open(p, "rb") as f:
        head = f.read(16)
    if _is_safetensors(head, size):
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or zipfile.is_zipfile(p):
        return _zip_format(p, shown)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # a legacy torch.save file or a plain pickle (protocols 2-5 open with 0x80 and the number)
    if not parse_onnx or _is_onnx(p):
        return "onnx"
    # the name only words the error: the bytes have already decided
    suffix = Path(shown).suffix.lower()
    what = {".safetensors": "a readable safetensors file (its header is damaged or the file is truncated)",
            ".onnx": "a valid ONNX model (it does not parse as an ONNX graph)"}.get(suffix)
    if what:
        raise ValueError(f"model file {shown!r} is not {what}")
    raise ValueError(f"model file {shown!r} is not a model file the explorer reads: expected {EXPECTED}")


def _is_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length, then the JSON header itself."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _zip_format(p: Path, shown: str) -> str:
    from explorer.models import safezip

    safezip.count_entries(p, f"model file {shown!r}", safezip.caps()["max_files"])
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"model file {shown!r} is a damaged zip archive: {e}") from None
    # torch.export archives name their format; TorchScript archives carry code/ and constants.pkl
    if any(n.endswith("/archive_format") or "/models/" in n and n.endswith(".json") for n in names):
        return "exported"
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "state_dict"
    raise ValueError(f"model file {shown!r} is a zip archive but not a PyTorch checkpoint: expected {EXPECTED}")


def check_checkpoint_zip(path: str | os.PathLike[str], shown: str) -> None:
    """A PyTorch checkpoint is a zip whose records torch reads whole into memory: it allocates the size each
    record declares in the zip's directory and refuses one that inflates to another size. So the declared
    sizes bound what torch.load allocates, and they are held to the caps for zips before it runs (a deflated
    record of a few MB can declare gigabytes; torch.save itself stores records uncompressed)."""
    from explorer.models import safezip

    cap = safezip.caps()
    safezip.count_entries(path, f"checkpoint {shown!r}", cap["max_files"])
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"checkpoint {shown!r} is a damaged zip archive: {e}") from None
    total, size = sum(i.file_size for i in infos), max(Path(path).stat().st_size, 1)
    big = max((i for i in infos if i.file_size > safezip.RATIO_FLOOR), default=None,
              key=lambda i: i.file_size / max(i.compress_size, 1))
    if len(infos) > cap["max_files"]:
        raise ValueError(f"checkpoint {shown!r} holds {len(infos):,} records, over the cap of {cap['max_files']:,} "
                         "(EXPLORER_ZIP_MAX_FILES): refused before reading")
    if total > cap["max_bytes"]:
        raise ValueError(f"checkpoint {shown!r} declares {total / 2**20:,.0f} MB of records, over the cap of "
                         f"{cap['max_bytes'] / 2**20:,.0f} MB a zip may expand to (EXPLORER_ZIP_MAX_MB): refused "
                         "before reading")
    ratio = max(total / size, big.file_size / max(big.compress_size, 1) if big else 0)
    if total > safezip.RATIO_FLOOR and ratio > cap["max_ratio"]:
        raise ValueError(f"checkpoint {shown!r} declares records {ratio:,.0f}x larger than their compressed bytes, "
                         f"over the cap of {cap['max_ratio']:g}x (EXPLORER_ZIP_MAX_RATIO): refused before reading "
                         "as a zip bomb")


def _is_onnx(p: Path) -> bool:
    """Protobuf has no magic number: a file is ONNX when it parses as a model with a graph and opsets."""
    import onnx

    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception:  # any parse failure means "not ONNX"; the caller names what was expected
        return False
    return m.ir_version > 0 and len(m.opset_import) > 0 and len(m.graph.node) > 0


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs a node holds (If branches, Loop and Scan bodies)."""
    import onnx

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _walk(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """Every node, and every node of the subgraphs nodes hold."""
    for node in nodes:
        yield node
        for g in _subgraphs(node):
            yield from _walk(g.node)


def _all_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the model: its graph's, its model-local functions', and those of every subgraph in them."""
    return _walk([*proto.graph.node, *(n for f in proto.functions for n in f.node)])


def _tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a model holds: the initializers of its graph and of every subgraph (sparse ones' values and
    indices too), and the tensors in node attributes (a Constant's value, a ConstantOfShape's fill)."""
    import onnx

    nodes = list(_all_nodes(proto))
    sparse: list[onnx.SparseTensorProto] = []
    for g in [proto.graph, *(g for n in nodes for g in _subgraphs(n))]:
        yield from g.initializer
        sparse += g.sparse_initializer
    for node in nodes:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors
            elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
                sparse.append(a.sparse_tensor)
            elif a.type == onnx.AttributeProto.SPARSE_TENSORS:
                sparse += a.sparse_tensors
    for sp in sparse:
        yield sp.values
        yield sp.indices


def check_onnx_external_data(proto: onnx.ModelProto, shown: str) -> None:
    """No tensor anywhere in the model may keep its bytes in an external file: the location is a file path,
    and from an upload it could name any file on this machine (or the uploaded file itself, read as weights)."""
    import onnx

    for t in _tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            where = next((e.value for e in t.external_data if e.key == "location"), "")
            raise ValueError(f"ONNX model {shown!r} keeps tensor {t.name or '(a constant)'!r} in an external data "
                             f"file ({where!r}): upload a single-file model "
                             "(onnx.save(model, path, save_as_external_data=False))")


def check_onnx_operators(proto: onnx.ModelProto, shown: str) -> None:
    """Standard operator domains only: a custom domain names operators from a library loaded into the
    runtime, code the explorer will not take from an upload. Model-local functions are allowed, as
    long as they are built of standard operators too."""
    local = {(f.domain, f.name) for f in proto.functions}
    for node in _all_nodes(proto):
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
            raise ValueError(f"ONNX model {shown!r} uses operator {node.op_type!r} from the domain "
                             f"{node.domain!r}: only the standard ONNX operator domains are accepted "
                             f"({', '.join(repr(d) for d in STANDARD_DOMAINS)})")
