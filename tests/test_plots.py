"""The report's hand-written pictures: SVG line charts and PNG encoding."""

from __future__ import annotations

import math
from xml.etree import ElementTree

import pytest
import torch
from torchvision.io import decode_png

from torchsmith.report.plots import encode_png, example_png, line_chart_svg, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


def _points(polyline: ElementTree.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in polyline.attrib["points"].split()]  # type: ignore[misc]


def _decode(png: bytes) -> torch.Tensor:
    return decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8))  # (C, H, W)


def test_line_chart_places_points_by_value_and_breaks_at_nan() -> None:
    svg = line_chart_svg(
        {"loss": [("train_loss", [0, 1, 2, 3, 4], [1.0, 0.5, math.nan, 0.25, 0.2]), ("val_loss", [4], [0.3])]},
        "step",
    )
    root = ElementTree.fromstring(svg)
    lines = list(root.iter(f"{SVG}polyline"))
    assert [len(_points(line)) for line in lines] == [2, 2]  # the NaN splits the curve; one point draws no line
    (x0, y0), (x1, y1) = _points(lines[0])
    (x3, y3), (x4, _) = _points(lines[1])
    assert x0 < x1 < x3 < x4 and x1 - x0 == pytest.approx(x4 - x3, abs=0.2)  # equal steps, equal distances
    assert y0 < y1 < y3 and (y1 - y0) == pytest.approx(2 * (y3 - y1), abs=0.3)  # coordinates kept to 0.1 px
    assert len(list(root.iter(f"{SVG}circle"))) == 5  # few points: every finite one marked
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"loss", "step", "train_loss", "val_loss"} <= set(texts)


def test_line_chart_survives_constant_and_empty_series() -> None:
    root = ElementTree.fromstring(line_chart_svg({"lr": [("lr", [0, 1], [0.1, 0.1])], "none": []}, "epoch"))
    assert root.attrib["width"] == "880" and len(list(root.iter(f"{SVG}polyline"))) == 1


def test_nice_ticks_cover_the_range_in_round_steps() -> None:
    assert nice_ticks(0.13, 0.92) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 938) == [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
    ticks = nice_ticks(3e-5, 9.7e-4)
    assert ticks[0] <= 3e-5 and ticks[-1] >= 9.7e-4 and 4 <= len(ticks) <= 8


def test_png_round_trips_through_a_real_decoder() -> None:
    generator = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8, generator=generator)
    gray = torch.randint(0, 256, (4, 9), dtype=torch.uint8, generator=generator)
    assert torch.equal(
        decode_png(torch.frombuffer(bytearray(encode_png(rgb)), dtype=torch.uint8)), rgb.permute(2, 0, 1)
    )
    assert torch.equal(decode_png(torch.frombuffer(bytearray(encode_png(gray)), dtype=torch.uint8))[0], gray)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(torch.zeros(2, 2))


def test_examples_keep_pixels_and_colour_spectrograms_low_bins_down() -> None:
    image = torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8)
    decoded = _decode(example_png(image, "image"))
    assert torch.equal(decoded, image)
    spectrogram = torch.zeros(1, 8, 5)
    spectrogram[0, 0] = 1.0  # energy in the lowest bin
    decoded = _decode(example_png(spectrogram, "audio"))
    assert decoded.shape == (3, 8, 5)
    assert decoded[:, -1].float().mean() > 200 and decoded[:, 0].float().mean() < 20  # bright at the bottom
