import os
import stat

import pytest
import zxingcpp
from PIL import Image

from onionpost.client.invitation import format_invitation, parse_invitation
from onionpost.client.qr import QRReadError, qr_png, qr_terminal, qr_version, read_qr_image

from .test_invitation import INVITATION, LINK, make_invitation

HALF_BLOCKS = {" ", "\u2580", "\u2584", "\u2588"}


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def terminal_to_image(drawing: str, light_background: bool) -> Image.Image:
    """Paint the terminal drawing as a screen would: foreground where a half block is drawn."""
    foreground, background = (0, 255) if light_background else (255, 0)
    lines = drawing.split("\n")
    image = Image.new("L", (len(lines[0]), 2 * len(lines)), background)
    for y, line in enumerate(lines):
        for x, char in enumerate(line):
            if char in "\u2580\u2588":
                image.putpixel((x, 2 * y), foreground)
            if char in "\u2584\u2588":
                image.putpixel((x, 2 * y + 1), foreground)
    # A margin in the terminal's background colour, then scale up like a real screen.
    framed = Image.new("L", (image.width + 8, image.height + 8), background)
    framed.paste(image, (4, 4))
    return framed.resize((framed.width * 6, framed.height * 6), Image.NEAREST)


def test_invitation_with_onion_relay_fits_version_10_at_level_m():
    assert len(INVITATION.relay.split("@")[1].split(":")[0]) == 62
    assert qr_version(LINK) <= 10
    for seed in (b"a", b"b", b"c"):
        assert qr_version(format_invitation(make_invitation(seed=seed))) <= 10


def test_qr_version_grows_with_the_text():
    assert qr_version("A") == 1
    assert qr_version("x" * 1000) > qr_version(LINK)
    with pytest.raises(ValueError, match="too long for a QR code"):
        qr_version("x" * 5000)


def test_png_round_trip(tmp_path):
    path = tmp_path / "invite.png"
    qr_png(LINK, path)
    assert mode(path) == 0o600
    assert read_qr_image(path) == LINK
    assert parse_invitation(read_qr_image(path)) == INVITATION


def test_png_round_trip_of_mixed_text(tmp_path):
    path = tmp_path / "text.png"
    text = "onionpost:1/ lower case, Upper Case, digits 0123 and symbols ~!@#"
    qr_png(text, path, scale=3)
    assert read_qr_image(path) == text


def test_png_replaces_a_looser_existing_file_with_mode_0600(tmp_path):
    path = tmp_path / "invite.png"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    qr_png(LINK, path)
    assert mode(path) == 0o600
    assert read_qr_image(path) == LINK


@pytest.mark.parametrize("light_background", [False, True])
def test_terminal_drawing_is_well_formed_and_readable(light_background):
    drawing = qr_terminal(LINK, light_background=light_background)
    lines = drawing.split("\n")
    size = 17 + 4 * qr_version(LINK) + 2 * 4  # modules plus the quiet zone on both sides
    assert set(drawing) <= HALF_BLOCKS | {"\n"}
    assert not drawing.endswith("\n")
    assert len(lines) == (size + 1) // 2
    assert all(len(line) == size for line in lines)
    quiet = "\u2588" if not light_background else " "
    assert lines[0] == lines[1] == quiet * size  # four quiet rows = two lines
    assert all(line[:4] == line[-4:] == quiet * 4 for line in lines)

    image = terminal_to_image(drawing, light_background)
    codes = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert [code.text for code in codes] == [LINK]


def test_transparent_png_is_read_over_white(tmp_path):
    source = tmp_path / "plain.png"
    qr_png(LINK, source, scale=4)
    gray = Image.open(source).convert("L")
    alpha = gray.point(lambda v: 255 if v < 128 else 0)  # dark modules opaque, the rest transparent
    rgba = Image.new("RGBA", gray.size, (0, 0, 0, 0))
    rgba.putalpha(alpha)
    path = tmp_path / "transparent.png"
    rgba.save(path)
    assert read_qr_image(path) == LINK


def test_missing_file(tmp_path):
    with pytest.raises(QRReadError, match="does not exist"):
        read_qr_image(tmp_path / "nope.png")


def test_directory(tmp_path):
    with pytest.raises(QRReadError, match="is a directory"):
        read_qr_image(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(QRReadError, match="is not an image"):
        read_qr_image(path)


def test_truncated_image(tmp_path):
    path = tmp_path / "cut.png"
    qr_png(LINK, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(QRReadError, match="unreadable"):
        read_qr_image(path)


def test_image_without_a_qr_code(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), "white").save(path)
    with pytest.raises(QRReadError, match="no QR code found"):
        read_qr_image(path)


def test_image_with_two_qr_codes(tmp_path):
    first, second = tmp_path / "1.png", tmp_path / "2.png"
    qr_png("first code", first, scale=4)
    qr_png("second code", second, scale=4)
    a, b = Image.open(first), Image.open(second)
    both = Image.new("L", (a.width + b.width, max(a.height, b.height)), 255)
    both.paste(a, (0, 0))
    both.paste(b, (a.width, 0))
    path = tmp_path / "both.png"
    both.save(path)
    with pytest.raises(QRReadError, match="2 QR codes found"):
        read_qr_image(path)
