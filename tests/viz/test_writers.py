"""Writing frames (mosic.viz.writers): contact sheets."""

import numpy as np

from mosic.viz import contact_sheet


def test_contact_sheet_layout():
    frames = np.stack([np.full((10, 12, 3), i * 20, np.uint8) for i in range(6)])
    assert contact_sheet(frames[:4]).shape == (10, 4 * 12 + 3 * 2, 3)
    sheet = contact_sheet(frames, columns=4, pad=1)
    assert sheet.shape == (2 * 10 + 1, 4 * 12 + 3, 3)
    assert (sheet[11:, 13:25] == 100).all()  # frame 5: row 1, column 1
