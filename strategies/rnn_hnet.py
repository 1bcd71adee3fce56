"""Dependency-preserving hypernetwork: an RNN generates the target weights chunk after chunk (a reconstruction).

Chandra, Varshney, Srijith, Gupta (2023), "Continual Learning with Dependency Preserving Hypernetworks",
WACV 2023, arXiv:2209.07712. No code of the authors was found; this is "RNN-HNET (reconstruction)".

What the abstract gives: an RNN hypernetwork generates the target network's weights sequentially, so that
the chunks (layers) are no longer generated independently of each other, trained with HNET's output
regulariser. Built here exactly that, on top of `strategies/hnet.py`:

    h_0 = 0;  for chunk i = 1..n:  h_i = LSTM([e_t, c_i], h_{i-1});   chunk_i = Linear(h_i)
    W(e_t) = concat_i chunk_i;   the training loop, targets, look-ahead and regulariser are HNET's

Missing from the paper (not in the abstract, no code): the RNN's size and what it reads per step, the
paper's additional regularisation and network-growth techniques, its hyper-parameters and numbers. The
LSTM's hidden size defaults to HNET's last hidden layer, so the output layer (most of the parameters) is
the same and the two differ only by the LSTM vs MLP core (`extra_state` reports both counts).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from clbench.hparams import HP
from clbench.strategies.hnet import HNET, ChunkedHypernet


class RNNHypernet(ChunkedHypernet):
    """Chunks generated in sequence by an LSTM whose state runs over the chunks of one forward pass."""

    def build_generator(self, d_in: int, layers: list[int], chunk_size: int) -> None:
        self.rnn = nn.LSTM(d_in, layers[-1], num_layers=len(layers), batch_first=True)
        self.out = nn.Linear(layers[-1], chunk_size)

    def chunks(self, inputs: Tensor, p: dict[str, Tensor]) -> Tensor:
        rnn = {n[len("rnn."):]: v for n, v in p.items() if n.startswith("rnn.")}
        h, _ = torch.func.functional_call(self.rnn, rnn, (inputs.unsqueeze(0),))   # one sequence of n_chunks
        return torch.nn.functional.linear(h.squeeze(0), p["out.weight"], p["out.bias"])


class RNNHNET(HNET):
    """HNET whose hypernetwork is an LSTM over the chunk sequence (dependency-preserving, reconstructed)."""

    description = "RNN hypernetwork CL (reconstruction of Chandra et al. 2023): an LSTM generates chunk after chunk"
    paper = ("Chandra, Varshney, Srijith, Gupta 2023, Continual Learning with Dependency Preserving "
             "Hypernetworks, WACV, arXiv:2209.07712")
    code = "none published; built on chrhenning/hypercl as strategies/hnet.py"
    hparams = {
        **HNET.hparams,
        "hnet_layers": HP([10], "LSTM hidden size per layer (one entry per stacked LSTM layer)", type=list,
                          items=int, low=1),
    }
    hnet_class = RNNHypernet
