"""The texture measure the encoder's detail gain search and the evaluation share."""

import torch

from codec.texture import hf_energy_tensor, luma_laplacian


def test_flat_images_hold_no_texture_and_a_checkerboard_its_known_amount():
    flat = torch.full((2, 3, 9, 7), 0.4)
    assert luma_laplacian(flat).shape == (2, 7, 5) and torch.all(hf_energy_tensor(flat) == 0)
    board = ((torch.arange(8)[:, None] + torch.arange(8)) % 2).float().expand(1, 3, 8, 8)  # luma 0 and 255
    assert torch.allclose(hf_energy_tensor(board.double()), torch.tensor([(4 * 255.0) ** 2], dtype=torch.double))
