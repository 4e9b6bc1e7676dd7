"""Property-based fuzzing: config loading, label mapping, NIfTI header handling (profile ``ci``; MEDSEG_FUZZ=long)."""

from __future__ import annotations

import struct

import nibabel as nib
import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.config import load_config
from medseg.data.labels import LabelMap
from medseg.errors import ConfigError, DataError
from medseg.io import Volume, read_volume

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                     st.text(max_size=20))
_keys = st.sampled_from(["data", "model", "train", "infer", "loss", "root", "kind", "image_size", "max_epochs",
                         "lr", "labels", "classes", "channels", "batch_size", "x"])
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_keys, inner, max_size=5)), max_leaves=20)
_fuzz = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_fuzz
@given(doc=st.dictionaries(_keys, _values, max_size=6),
       sets=st.lists(st.tuples(st.lists(_keys, min_size=1, max_size=3), st.text(max_size=15)), max_size=3))
def test_config_loading_raises_only_config_error(tmp_path_factory, doc, sets):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    overrides = [".".join(k) + "=" + v for k, v in sets]
    try:
        cfg = load_config(path, overrides)
    except ConfigError as err:
        assert "\n" not in str(err).strip() or str(err).count("\n") < 50
    else:
        assert cfg.train.max_epochs >= 1


@_fuzz
@given(text=st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!\n #'\"|>x1")), max_size=200))
def test_raw_yaml_text_raises_only_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("raw") / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError:
        pass


@given(values=st.lists(st.integers(0, 65535), min_size=1, max_size=6, unique=True),
       data=st.lists(st.integers(0, 65535), min_size=1, max_size=50))
def test_label_map_round_trip_or_clear_error(values, data):
    labels = LabelMap.from_classes([(f"c{v}", [v]) for v in sorted(values)])
    arr = np.asarray(data, dtype=np.int64)
    try:
        classes, _ = labels.to_class(arr)
    except DataError as err:
        assert "not in" in str(err) or "label" in str(err)
        assert not set(data) <= set(values)
        return
    back = np.asarray(labels.to_values(np.asarray(classes)))
    np.testing.assert_array_equal(back, arr)


_HEADER_FIELDS = {  # (struct format, offset) in the NIfTI-1 header
    "dim": ("<8h", 40), "datatype": ("<h", 70), "bitpix": ("<h", 72), "pixdim": ("<8f", 76),
    "vox_offset": ("<f", 108), "scl_slope": ("<f", 112), "qform_code": ("<h", 252), "sform_code": ("<h", 254),
    "quatern": ("<6f", 256), "srow": ("<12f", 280),
}
_i16 = st.integers(-40000, 40000).map(lambda v: max(-32768, min(32767, v)))
_f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(_HEADER_FIELDS)), data=st.data(), gz=st.booleans())
def test_nifti_header_fuzz_gives_volume_or_data_error(tmp_path_factory, field, data, gz):
    img = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), np.diag([2.0, 2.0, 3.0, 1.0]))
    raw = bytearray(img.header.binaryblock) + b"\x00" * 4 + img.dataobj.tobytes(order="F")
    fmt, offset = _HEADER_FIELDS[field]
    n = struct.calcsize(fmt) // (2 if fmt[-1] == "h" else 4)
    values = data.draw(st.lists(_i16 if fmt[-1] == "h" else _f32, min_size=n, max_size=n))
    struct.pack_into(fmt, raw, offset, *values)
    path = tmp_path_factory.mktemp("nii") / ("v.nii.gz" if gz else "v.nii")
    import gzip

    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    try:
        vol = read_volume(path)
    except DataError as err:
        assert str(path) in str(err)
        return
    assert isinstance(vol, Volume) and vol.array.ndim == 3 and min(vol.shape) >= 1
    assert np.all(np.isfinite(vol.affine))
