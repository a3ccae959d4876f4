"""LSTM encoder-decoder with Luong attention and input feeding.

Read top to bottom: config, the encoder, one decoder step, teacher-forced forward, the loss.
The search (greedy, beam) lives in `search.py` and only sees `encode()` and `decode_step()`.
Shapes: B batch, S source length, T target length, H hidden size, E embedding size, L decoder layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from s2s.config import ModelConfig


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row of x (B, S, ...) within its length, leaving padding in place.

    Written with gather rather than packed sequences so that training and both ONNX exporters run the
    same graph: the backward direction then never reads padding before real tokens.
    """
    t = torch.arange(x.size(1), device=x.device).unsqueeze(0)  # (1, S)
    last = lengths.unsqueeze(1) - 1  # (B, 1)
    idx = torch.where(t <= last, last - t, t)  # (B, S)
    rows = torch.arange(x.size(0), device=x.device).unsqueeze(1)  # (B, 1)
    return x[rows, idx]  # advanced indexing, not expand+gather: the dynamo exporter baked expand's shape in


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        E, H = cfg.emb_dim, cfg.hidden_size
        self.src_emb = nn.Embedding(cfg.src_vocab_size, E, padding_idx=cfg.pad_id)
        self.tgt_emb = nn.Embedding(cfg.tgt_vocab_size, E, padding_idx=cfg.pad_id)
        self.fwd = nn.ModuleList(nn.LSTM(E if i == 0 else H, H // 2, batch_first=True) for i in range(cfg.encoder_layers))
        self.bwd = nn.ModuleList(nn.LSTM(E if i == 0 else H, H // 2, batch_first=True) for i in range(cfg.encoder_layers))
        # decoder input is [embedding; previous attentional vector] (input feeding)
        self.cells = nn.ModuleList(nn.LSTMCell(E + H if i == 0 else H, H) for i in range(cfg.decoder_layers))
        self.attn_query = nn.Linear(H, H, bias=False)  # Luong "general": score(h, m) = (W h) . m
        self.attn_out = nn.Linear(2 * H, H, bias=False)  # attentional vector: tanh(W [context; h])
        self.generator = nn.Linear(H, cfg.tgt_vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """src (B, S) ids, src_lens (B,) -> memory (B, S, H), mask (B, S), h0 and c0 (B, L, H), feed0 (B, H)."""
        mask = torch.arange(src.size(1), device=src.device).unsqueeze(0) < src_lens.unsqueeze(1)  # (B, S)
        x = self.drop(self.src_emb(src))  # (B, S, E)
        for i, (fwd, bwd) in enumerate(zip(self.fwd, self.bwd)):
            out_f, _ = fwd(x)  # (B, S, H/2); positions past the length are never read
            out_b = reverse_padded(bwd(reverse_padded(x, src_lens))[0], src_lens)  # (B, S, H/2)
            x = torch.cat([out_f, out_b], dim=-1)  # (B, S, H)
            if i + 1 < len(self.fwd):
                x = self.drop(x)
        memory = x * mask.unsqueeze(-1).to(x.dtype)  # (B, S, H), zeros on padding
        # decoder starts from the final hidden state of each direction: forward at len-1, backward at 0
        half = memory.size(2) // 2
        at_end = memory[torch.arange(memory.size(0), device=memory.device), src_lens - 1]  # (B, H)
        h_last = torch.cat([at_end[:, :half], memory[:, 0, half:]], dim=-1)  # (B, H)
        L = len(self.cells)
        h0 = h_last.unsqueeze(1).expand(-1, L, -1).contiguous()  # (B, L, H)
        c0 = torch.zeros_like(h0)  # (B, L, H)
        feed0 = torch.zeros_like(h_last)  # (B, H)
        return memory, mask, h0, c0, feed0

    def _step(self, prev: torch.Tensor, h: torch.Tensor, c: torch.Tensor, feed: torch.Tensor, memory: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One decoder step before the output projection -> attentional vector (B, H), h, c, attention (B, S)."""
        x = torch.cat([self.drop(self.tgt_emb(prev)), feed], dim=-1)  # (B, E + H)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            hi, ci = cell(x, (h[:, i], c[:, i]))  # (B, H) each
            hs.append(hi)
            cs.append(ci)
            x = self.drop(hi) if i + 1 < len(self.cells) else hi
        scores = torch.bmm(memory, self.attn_query(x).unsqueeze(2)).squeeze(2)  # (B, S)
        scores = scores.masked_fill(~mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)  # (B, S)
        context = torch.bmm(attn.unsqueeze(1), memory).squeeze(1)  # (B, H)
        out = torch.tanh(self.attn_out(torch.cat([context, x], dim=-1)))  # (B, H)
        return out, torch.stack(hs, 1), torch.stack(cs, 1), attn

    def decode_step(self, prev: torch.Tensor, h: torch.Tensor, c: torch.Tensor, feed: torch.Tensor, memory: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step for search and ONNX: prev (B,) -> log-probs (B, V), h, c (B, L, H), feed (B, H), attention (B, S)."""
        out, h, c, attn = self._step(prev, h, c, feed, memory, mask)
        log_probs = torch.log_softmax(self.generator(out).float(), dim=-1)  # (B, V)
        return log_probs, h, c, out, attn

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor, dec_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: dec_in (B, T) is the target shifted right (see `shift_target`) -> logits (B, T, V)."""
        memory, mask, h, c, feed = self.encode(src, src_lens)
        outs = []
        for t in range(dec_in.size(1)):
            feed, h, c, _ = self._step(dec_in[:, t], h, c, feed, memory, mask)
            outs.append(feed)
        return self.generator(self.drop(torch.stack(outs, dim=1)))  # (B, T, V)


def shift_target(tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tgt (B, T+1) = [BOS, y1 .. yn, EOS, pad..] -> decoder input tgt[:, :-1] and gold tgt[:, 1:].

    Position t of the decoder sees tokens up to t and is scored on token t+1: it is never shown the
    token it must predict (forgetting this gives a model that learns to copy).
    """
    return tgt[:, :-1], tgt[:, 1:]


def sequence_loss(logits: torch.Tensor, gold: torch.Tensor, pad_id: int, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed label-smoothed cross-entropy over non-pad gold tokens -> (loss_sum, nll_sum, n_tokens)."""
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_gold = gold.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_gold, ignore_index=pad_id, label_smoothing=label_smoothing, reduction="sum")
    with torch.no_grad():
        nll = F.cross_entropy(flat_logits, flat_gold, ignore_index=pad_id, reduction="sum")
    return loss, nll, int((flat_gold != pad_id).sum())
