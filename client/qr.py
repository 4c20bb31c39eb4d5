"""QR codes for invitation links: draw them in a terminal or a PNG, and read them from images.

Codes use error-correction level M and a 4-module quiet zone (the minimum the
QR standard asks for). Upper-case runs of the text are packed in alphanumeric
mode, which is why invitation links are upper-case base32.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import qrcode
import qrcode.constants
import qrcode.exceptions
import zxingcpp
from PIL import Image

QUIET_ZONE = 4
ERROR_CORRECTION = qrcode.constants.ERROR_CORRECT_M

# Indexed by (top drawn, bottom drawn): each character shows two modules stacked.
_HALF_BLOCKS = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584", (True, True): "\u2588"}


class QRReadError(Exception):
    """No single QR code could be read from an image; the message says why."""


def qr_version(text: str) -> int:
    """The QR version (1-40) that ``text`` needs at error-correction level M."""
    return _make(text).version


def qr_terminal(text: str, *, light_background: bool = False) -> str:
    """``text`` as a QR code of Unicode half blocks, one line per two module rows.

    Terminals draw characters in the foreground colour, so by default the blocks
    are the QR code's light modules (for light text on a dark background); pass
    ``light_background=True`` for dark text on a light background. The result has
    no trailing newline.
    """
    matrix = _matrix(text)
    if len(matrix) % 2:
        matrix.append([False] * len(matrix[0]))  # one more quiet-zone row, light
    lines = []
    for top, bottom in zip(matrix[0::2], matrix[1::2]):
        lines.append(
            "".join(
                _HALF_BLOCKS[(upper == light_background, lower == light_background)]
                for upper, lower in zip(top, bottom)
            )
        )
    return "\n".join(lines)


def qr_png(text: str, path: Path, *, scale: int = 8) -> None:
    """Write ``text`` as a black-on-white QR code PNG, ``scale`` pixels a module, file mode 0600."""
    matrix = _matrix(text)
    size = len(matrix)
    pixels = bytes(0 if dark else 255 for row in matrix for dark in row)
    image = Image.frombytes("L", (size, size), pixels).resize((size * scale, size * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.convert("1").save(buffer, format="PNG")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # the file may have existed with a looser mode
        out.write(buffer.getvalue())


def read_qr_image(path: Path) -> str:
    """The text of the one QR code in the image at ``path``.

    Raises:
        QRReadError: the file is missing or not an image, or it holds no QR code or several.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            gray = _flatten(image)
    except FileNotFoundError:
        raise QRReadError(f"cannot read a QR code: {path} does not exist") from None
    except IsADirectoryError:
        raise QRReadError(f"cannot read a QR code: {path} is a directory, not an image") from None
    except Image.UnidentifiedImageError:
        raise QRReadError(f"cannot read a QR code: {path} is not an image (or not a format Pillow knows)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise QRReadError(f"cannot read a QR code: the image {path} is unreadable ({exc})") from None

    codes = zxingcpp.read_barcodes(gray, formats=zxingcpp.BarcodeFormat.QRCode)
    if not codes:
        raise QRReadError(f"no QR code found in {path}")
    if len(codes) > 1:
        raise QRReadError(f"{len(codes)} QR codes found in {path}; crop the image to the one you mean")
    return codes[0].text


def _make(text: str) -> qrcode.QRCode:
    code = qrcode.QRCode(error_correction=ERROR_CORRECTION, border=QUIET_ZONE)
    code.add_data(text)
    try:
        code.make(fit=True)
    except (qrcode.exceptions.DataOverflowError, ValueError):  # qrcode 8 raises ValueError past version 40
        raise ValueError(f"the text ({len(text)} characters) is too long for a QR code") from None
    return code


def _matrix(text: str) -> list[list[bool]]:
    """Modules including the quiet zone, True for dark."""
    return _make(text).get_matrix()


def _flatten(image: Image.Image) -> Image.Image:
    """Grey scale, with any transparency laid over white (a transparent PNG reads as black otherwise)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image.convert("L")
