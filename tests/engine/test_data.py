"""Tests for the dataset sources, splits and model adaptation in snp_engine.data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from snp_engine.data import (
    DATASETS,
    DIGITS_MEAN,
    DIGITS_STD,
    adapt_to_model,
    digits_split_indices,
    load_data,
    make_loader,
)
from snp_engine.errors import DataError


def _all(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels)


# ----------------------------------------------------------------------------------------- digits


def test_digits_is_registered():
    assert "digits" in DATASETS


def test_digits_split_sizes_and_shapes():
    bundle = load_data("digits")
    assert (len(bundle.train), len(bundle.calibration), len(bundle.test)) == (1000, 300, 497)
    assert bundle.num_classes == 10 and bundle.channels == 1 and bundle.image_size == (8, 8)
    image, label = bundle.test[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert isinstance(label, int)


def test_digits_splits_are_disjoint_and_cover_everything():
    train, cal, test = (set(idx.tolist()) for idx in digits_split_indices())
    assert not (train & cal) and not (train & test) and not (cal & test)
    assert len(train | cal | test) == 1797


def test_digits_is_deterministic():
    first, second = load_data("digits"), load_data("digits")
    for a, b in ((first.train, second.train), (first.test, second.test)):
        xa, ya = _all(a)
        xb, yb = _all(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_digits_normalisation():
    from sklearn.datasets import load_digits

    train_idx, _, _ = digits_split_indices()
    raw = load_digits().data[train_idx] / 16.0
    assert abs(DIGITS_MEAN - raw.mean()) < 1e-9
    assert abs(DIGITS_STD - raw.std()) < 1e-9
    images, labels = _all(load_data("digits").train)
    assert abs(float(images.mean())) < 1e-4
    assert float(images.std()) == pytest.approx(1.0, abs=1e-3)
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_make_loader_limit_and_seeded_shuffle():
    bundle = load_data("digits")
    loader = make_loader(bundle.calibration, 64, limit=100)
    assert sum(len(y) for _, y in loader) == 100
    first = [y.tolist() for _, y in make_loader(bundle.train, 50, shuffle=True, seed=3)]
    again = [y.tolist() for _, y in make_loader(bundle.train, 50, shuffle=True, seed=3)]
    assert first == again


# -------------------------------------------------------------------------------------------- npz


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_xy_is_used_whole(tmp_path):
    rng = np.random.default_rng(1)
    spec = _write_npz(tmp_path / "d.npz", x=rng.random((20, 3, 5, 6), dtype=np.float32), y=np.arange(20) % 4)
    bundle = load_data(spec)
    assert bundle.train is None
    assert len(bundle.calibration) == 20 and bundle.test is bundle.calibration
    assert not bundle.held_out and "calibration data" in bundle.evaluation_label
    assert sorted(bundle.calibration.indices) == list(range(20))  # every sample, shuffled once
    assert bundle.num_classes == 4 and bundle.channels == 3 and bundle.image_size == (5, 6)
    image, label = bundle.test[0]
    assert image.shape == (3, 5, 6) and isinstance(label, int)


def test_npz_with_train_and_test_keys(tmp_path):
    rng = np.random.default_rng(2)
    spec = _write_npz(
        tmp_path / "d.npz",
        x_train=rng.random((12, 1, 4, 4), dtype=np.float32),
        y_train=np.arange(12) % 3,
        x_test=rng.random((5, 1, 4, 4), dtype=np.float32),
        y_test=np.arange(5) % 3,
    )
    bundle = load_data(spec)
    assert len(bundle.train) == 12 and len(bundle.test) == 5
    assert len(bundle.calibration) == 12 and bundle.held_out
    assert bundle.num_classes == 3


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"x": np.zeros((4, 1, 2, 2), np.float32)}, "missing key y"),
        ({"x": np.zeros((4, 4), np.float32), "y": np.zeros(4, np.int64)}, "expected (N, C, H, W)"),
        ({"x": np.zeros((4, 1, 2, 2, 1), np.float32), "y": np.zeros(4, np.int64)}, "expected (N, C, H, W)"),
        ({"x": np.zeros((4, 1, 2, 2), np.int32), "y": np.zeros(4, np.int64)}, "dtype int32"),
        ({"x": np.zeros((4, 1, 2, 2), bool), "y": np.zeros(4, np.int64)}, "dtype bool"),
        ({"x": np.zeros((4, 1, 2, 2), np.float32), "y": np.array([0.0, 1.5, 2.0, 1.0])}, "dtype float64"),
        ({"x": np.zeros((4, 1, 2, 2), np.float32), "y": np.zeros((4, 2), np.int64)}, "'y' has shape (4, 2)"),
        ({"x": np.zeros((4, 1, 2, 2), np.float32), "y": np.array([0, 1, -1, 2])}, "negative labels"),
        ({"x": np.zeros((4, 1, 2, 2), np.float32), "y": np.array(["-1", "0", "1", "2"])}, "negative labels"),
        ({"x": np.zeros((4, 1, 2, 2), np.float32), "y": np.array([0, 1, -1, 2])}, "negative labels"),
        ({"x": np.zeros((4, 1, 2, 2), np.float32), "y": np.zeros(3, np.int64)}, "'y' has shape (3,)"),
    ],
)
def test_npz_errors_name_the_file(tmp_path, arrays, expected):
    spec = _write_npz(tmp_path / "broken_data.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_data(spec)
    assert "broken_data.npz" in str(info.value)
    assert expected in str(info.value)


def _xy(bundle) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibration images and labels in file order (the split is shuffled)."""
    order = np.argsort(bundle.calibration.indices)
    images, labels = _all(bundle.calibration)
    return images[order], labels[order]


def test_npz_other_image_layouts_and_uint8_pixels(tmp_path):
    """Channels-last arrays, (N, H, W) grey images and uint8 pixels are read, and each is noted."""
    from snp_engine.data import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)  # N, H, W, C
    labels = np.arange(6) % 2
    bundle = load_data(_write_npz(tmp_path / "u8.npz", x=pixels, y=labels))
    images, read = _xy(bundle)
    expected = (pixels.transpose(0, 3, 1, 2) / 255.0 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[
        :, None, None
    ]
    assert bundle.channels == 3 and bundle.image_size == (5, 7)
    assert np.allclose(images.numpy(), expected, atol=1e-6) and read.tolist() == labels.tolist()
    assert any("channels-last" in a for a in bundle.adapted) and any("uint8" in a for a in bundle.adapted)

    grey = rng.standard_normal((6, 5, 7)).astype(np.float32)  # N, H, W
    bundle = load_data(_write_npz(tmp_path / "grey.npz", x=grey, y=labels))
    images, _ = _xy(bundle)
    assert bundle.channels == 1 and torch.equal(images[:, 0], torch.from_numpy(grey))
    assert len(bundle.adapted) == 1 and "(N, H, W)" in bundle.adapted[0]

    rgba = np.concatenate([pixels, np.full((6, 5, 7, 1), 7, np.uint8)], axis=3)
    bundle = load_data(_write_npz(tmp_path / "rgba.npz", x=rgba, y=labels))
    assert bundle.channels == 3 and np.allclose(_xy(bundle)[0].numpy(), expected, atol=1e-6)
    assert any("alpha" in a for a in bundle.adapted)
    floats = rng.standard_normal((6, 4, 5, 7)).astype(np.float32)  # 4 float channels: the model's to judge
    assert load_data(_write_npz(tmp_path / "four.npz", x=floats, y=labels)).channels == 4

    plain = rng.standard_normal((6, 3, 5, 7)).astype(np.float32)  # already N, C, H, W: untouched
    assert load_data(_write_npz(tmp_path / "plain.npz", x=plain, y=labels)).adapted == ()


@pytest.mark.parametrize(
    ("y", "said"),
    [
        (np.array([2, 0, 1, 2])[:, None], "(N, 1)"),
        (np.eye(3, dtype=np.float32)[[2, 0, 1, 2]], "one-hot"),
        (np.array(["2", "0", "1", "2"]), "numeric string"),
    ],
    ids=["column", "one-hot", "numeric-strings"],
)
def test_npz_label_forms_read_as_class_indices(tmp_path, y, said):
    bundle = load_data(_write_npz(tmp_path / "d.npz", x=np.zeros((4, 1, 2, 2), np.float32), y=y))
    assert _xy(bundle)[1].tolist() == [2, 0, 1, 2] and bundle.num_classes == 3
    assert len(bundle.adapted) == 1 and said in bundle.adapted[0]


def test_npz_label_names_are_numbered_in_sorted_order_over_both_splits(tmp_path):
    """Names in sorted order, like folder names; a name only in the test part still gets its own index."""
    x = np.zeros((3, 1, 2, 2), np.float32)
    spec = _write_npz(
        tmp_path / "d.npz",
        x_train=x,
        y_train=np.array(["dog", "cat", "dog"]),
        x_test=x,
        y_test=np.array(["emu", "cat", "dog"]),
    )
    bundle = load_data(spec)
    assert bundle.classes == ("cat", "dog", "emu") and bundle.num_classes == 3
    assert _all(bundle.test)[1].tolist() == [2, 0, 1]
    assert sorted(_all(bundle.train)[1].tolist()) == [0, 1, 1]
    assert any("cat=0" in a for a in bundle.adapted)


def test_npz_conversions_are_said_in_the_one_note(tmp_path):
    from snp_engine.inputs import fit_data

    pixels = np.zeros((4, 8, 8, 1), np.uint8)
    bundle = load_data(_write_npz(tmp_path / "d.npz", x=pixels, y=np.arange(4) % 2))
    note = fit_data(bundle, (3, 16, 16), None).note
    assert "channels-last" in note and "uint8" in note and "repeated to 3" in note and "-> 16x16" in note
    assert "\n" not in note
    assert "uint8" in fit_data(bundle, (1, 8, 8), None).note  # nothing else to adapt: still said


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.npz"):
        load_data(f"npz:{tmp_path / 'nothere.npz'}")


def test_unknown_spec():
    with pytest.raises(DataError, match="no-such-dataset"):
        load_data("no-such-dataset")


@pytest.mark.parametrize("spec", ["", "  ", "npz:"])
def test_an_empty_spec_is_refused_not_read_as_the_current_folder(spec, tmp_path, monkeypatch):
    _make_image_folder(tmp_path / "pets")  # the current folder holds a class tree: must not be read
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"no data given|needs a path"):
        load_data(spec)


def _write_torch_data(path):
    torch.save({"x": torch.zeros(2, 1, 4, 4), "y": torch.zeros(2, dtype=torch.long)}, path)


def _write_zip(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a/1.png", b"")


def _write_npz_without_suffix(path):
    with open(path, "wb") as handle:
        np.savez(handle, x=np.zeros(1), y=np.zeros(1))


@pytest.mark.parametrize(
    ("name", "write", "expected"),
    [
        ("d.pt", _write_torch_data, "a PyTorch file.*numpy.savez"),
        ("one.png", lambda p: Image.fromarray(np.zeros((4, 4), np.uint8)).save(p), "a single image.*FOLDER/<class>"),
        ("d.csv", lambda p: p.write_text("a,b\n1,2\n"), "not a folder and not an .npz file"),
        ("images.zip", _write_zip, "unpack it"),
        ("arrays", _write_npz_without_suffix, "give it as npz:"),
    ],
    ids=["torch", "image", "csv", "zip", "npz-without-suffix"],
)
def test_a_file_that_is_no_data_says_what_it_is(tmp_path, name, write, expected):
    path = tmp_path / name
    write(path)
    with pytest.raises(DataError, match=expected):
        load_data(str(path))


def test_npz_prefix_on_a_folder_or_a_torch_file(tmp_path):
    root = _make_image_folder(tmp_path / "pets")
    with pytest.raises(DataError, match="is a folder; give a folder of images without npz:"):
        load_data(f"npz:{root}")
    _write_torch_data(tmp_path / "d.pt")
    with pytest.raises(DataError, match=r"is a PyTorch file, not a NumPy \.npz"):
        load_data(f"npz:{tmp_path / 'd.pt'}")


# ------------------------------------------------------------------------------------ ImageFolder


def _make_image_folder(root, per_class: int = 3):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "dog" / "junk.png").write_bytes(b"this is not an image")
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_image_folder_split_and_skipped_file(tmp_path):
    root = _make_image_folder(tmp_path / "pets")
    bundle = load_data(str(root), input_size=10)
    assert bundle.skipped == 1
    assert bundle.num_classes == 2 and bundle.classes == ("cat", "dog")
    assert len(bundle.calibration) == 6 and bundle.test is bundle.calibration and not bundle.held_out
    image, label = bundle.calibration[0]
    assert image.shape == (3, 10, 10) and label in (0, 1)


def test_image_folder_keeps_its_own_size(tmp_path):
    bundle = load_data(str(_make_image_folder(tmp_path / "pets")))
    assert bundle.image_size == (12, 12)
    assert bundle.calibration[0][0].shape == (3, 12, 12)


def test_image_folder_of_mixed_sizes_is_decoded_again_at_the_wanted_size(tmp_path):
    root = _make_image_folder(tmp_path / "pets")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "cat" / "wide.png")
    bundle = load_data(str(root))
    assert bundle.image_size is None  # mixed sizes: no size of its own
    fitted = adapt_to_model(bundle, 1, (9, 9))
    assert fitted.image_size == (9, 9) and fitted.channels == 1
    assert {tuple(fitted.calibration[i][0].shape) for i in range(len(fitted.calibration))} == {(1, 9, 9)}


def test_image_folder_with_train_and_val(tmp_path):
    _make_image_folder(tmp_path / "ds" / "train", per_class=4)
    _make_image_folder(tmp_path / "ds" / "val", per_class=2)
    bundle = load_data(str(tmp_path / "ds"), input_size=8)
    assert len(bundle.train) == 8 and len(bundle.test) == 4
    assert len(bundle.calibration) == 8  # drawn from train so val stays whole
    assert bundle.skipped == 2


@pytest.mark.parametrize("val", ["validation", "Valid"])
def test_a_validation_folder_is_the_val_split(tmp_path, val):
    """train/ + validation/ (a common layout) must not be refused, nor read as two classes."""
    _make_image_folder(tmp_path / "d" / "train", per_class=4)
    _make_image_folder(tmp_path / "d" / val, per_class=2)
    bundle = load_data(str(tmp_path / "d"))
    assert bundle.held_out and bundle.classes == ("cat", "dog")
    assert len(bundle.train) == 8 and len(bundle.test) == 4
    _make_image_folder(tmp_path / "d" / "val", per_class=1)
    with pytest.raises(DataError, match=rf"both ({val}|val)/ and ({val}|val)/ would be its val split"):
        load_data(str(tmp_path / "d"))


def test_image_folder_grayscale(tmp_path):
    bundle = load_data(str(_make_image_folder(tmp_path / "pets")), input_size=6, channels=1)
    assert bundle.test[0][0].shape == (1, 6, 6)


def _grey_folder(root, per_class: int = 2, mode: str = "L"):
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((6, 6), 100 + i, np.uint16 if mode == "I;16" else np.uint8)
            Image.fromarray(pixels if mode != "I;16" else pixels * 256).save(root / cls / f"{i}.png")
    return root


def test_grey_folder_has_one_channel_and_says_so_only_when_repeated(tmp_path):
    from snp_engine.inputs import fit_data

    bundle = load_data(str(_grey_folder(tmp_path / "grey")))
    assert bundle.channels == 1 and bundle.calibration[0][0].shape == (1, 6, 6)
    assert fit_data(bundle, (1, 6, 6), None).note is None  # nothing converted, nothing said
    repeated = fit_data(bundle, (3, 6, 6), None)
    assert "repeated to 3" in repeated.note and repeated.bundle.calibration[0][0].shape == (3, 6, 6)


def test_grey_images_among_colour_ones_are_said(tmp_path):
    from snp_engine.inputs import fit_data

    root = _grey_folder(tmp_path / "mixed")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "a" / "colour.png")
    bundle = load_data(str(root))
    assert bundle.channels == 3 and bundle.adapted == ("4 of 5 images are grey, read as RGB",)
    assert "4 of 5" in fit_data(bundle, (3, 6, 6), None).note
    assert "4 of 5" not in fit_data(bundle, (1, 6, 6), None).note  # decoded as grey: nothing read as RGB


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path):
    """PIL's own conversion turns every 16-bit value above 255 white; 100*256 must read as 100/255."""
    from snp_engine.data import IMAGENET_MEAN, IMAGENET_STD

    bundle = load_data(str(_grey_folder(tmp_path / "deep", mode="I;16")))
    images, _ = _all(bundle.calibration)
    expected = {(v / 255 - sum(IMAGENET_MEAN) / 3) / (sum(IMAGENET_STD) / 3) for v in (100, 101)}
    found = {round(float(v), 5) for v in images.unique()}
    assert found == {round(v, 5) for v in expected}


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_data(str(tmp_path / "empty"))


def test_folder_with_only_unreadable_images(tmp_path):
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="no readable images"):
        load_data(str(tmp_path / "bad"))


# --------------------------------------------------------------------------------------- adapting


def test_adapt_repeats_channels_and_resizes():
    bundle = load_data("digits")
    adapted = adapt_to_model(bundle, 3, (32, 32))
    image, label = adapted.test[0]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert label == bundle.test[0][1]
    assert adapted.channels == 3 and adapted.image_size == (32, 32)
    assert len(adapted.train) == 1000


def test_adapt_is_a_no_op_when_shapes_match():
    bundle = load_data("digits")
    assert adapt_to_model(bundle, 1, (8, 8)) is bundle


def test_adapt_refuses_to_drop_channels(tmp_path):
    spec = _write_npz(tmp_path / "rgb.npz", x=np.zeros((4, 3, 4, 4), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="3-channel"):
        adapt_to_model(load_data(spec), 1, None)


def test_uint8_npz_pixels_decode_as_the_same_png_files_do(tmp_path):
    rng = np.random.default_rng(5)
    pixels = (rng.random((6, 5, 5, 3)) * 255).astype(np.uint8)
    for index, image in enumerate(pixels):
        (tmp_path / "f" / f"c{index % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "f" / f"c{index % 2}" / f"{index:02d}.png")
    folder = load_data(str(tmp_path / "f"))
    npz = load_data(_write_npz(tmp_path / "p.npz", x=pixels, y=np.arange(6) % 2))
    order = np.argsort(folder.calibration.indices)  # folder files are listed by class, then name
    from_files = _all(folder.calibration)[0][order]
    by_class = [*range(0, 6, 2), *range(1, 6, 2)]
    assert torch.allclose(from_files, _xy(npz)[0][by_class], atol=1e-6)
