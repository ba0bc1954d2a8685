"""Settings for the depot label printers.

Labels are printed on Zebra printers in every depot; these constants are shared by the depot app.
"""

# Shipping labels are 4 by 6 inches, printed at 203 dots per inch.
LABEL_WIDTH_INCHES = 4
LABEL_HEIGHT_INCHES = 6
PRINTER_DPI = 203

# The barcode on every label is Code 128; return labels use a QR code instead.
BARCODE_FORMAT = "code128"
RETURN_LABEL_FORMAT = "qr"

# A print job that does not finish within 12 seconds is cancelled and sent to the backup printer.
PRINT_TIMEOUT_SECONDS = 12


def label_size_dots() -> tuple[int, int]:
    """Label width and height in printer dots."""
    return LABEL_WIDTH_INCHES * PRINTER_DPI, LABEL_HEIGHT_INCHES * PRINTER_DPI
