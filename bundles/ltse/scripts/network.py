"""LTSE: Language-guided Tissue referring Segmentation with an adaptive Expert mixture (Tang et al.).

Text branch (Sec. 2.1, eq. 1): LLaVA (:class:`common.networks.llava.LlavaLM`) reads the image
(CLIP pixels, (B, 3, 336, 336) -> 576 image tokens) and the instruction, and answers with text
holding one [SEG] per referred target and a [REJ] per absent one (common/data/seg_answers.py).

Mask branch (Sec. 2.2), per [SEG]:

    f_img  = F_v(x_img)          eq. 2   SAM ViT-H image encoder, frozen: (B, 3, 1024, 1024) -> (B, 256, 64, 64)
    h_seg  = phi(y_txt[SEG])     eq. 3   the last-layer hidden state that predicts the [SEG] (d = 4096)
                                         -> Linear(d, d), ReLU, Linear(d, 256)
    f_prom = F_p(h_seg)          eq. 3   SAM prompt encoder, frozen: sparse (n, 1, 256) + "no mask" dense
    mask   = AEM(f_img, f_prom)  eqs. 4-6  (aem.py); or one SAM mask decoder with ``use_aem=False``

Decoder logits (n, 1, 256, 256) are resized as SAM does to the padded frame, cropped to the
resized image and resized to the original size. The k-th [SEG] of an answer is the k-th mask.

Ablation switches (each builds only what it uses): ``multi_seg`` (Table 2 "M-[SEG]": False
allows one [SEG] per answer), ``use_rej`` (Table 2 "[REJ]": False leaves [REJ] out of the
vocabulary), ``use_aem`` (Table 2 "w/o AEM": one decoder, no gate), ``num_experts`` / ``top_k``
(Fig. 3).

Checkpoints (``common.engine.checkpoints.ModelDescription`` with ``leave_out_frozen_pretrained``) hold
only the trained parts: LoRA weights and new-token rows of the LLM (``llava.*lora_*``,
``llava.*trainable_tokens_delta*``; with ``LlavaLM(train_all_token_rows=True)`` the whole trained embedding and
lm_head, ``llava.*modules_to_save*``), ``projector.*``, ``aem.*`` (experts and gate) or ``decoder.*``.
Everything else under ``llava.`` and ``sam.`` is the frozen pretrained base and loads from its config
keys when the network is built again (a base with random weights, named by no source, stays in).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from transforms.base.describe import configurable
from common.networks.llava import LlavaLM, tokenize_conversation
from common.networks.sam import SamEncoder, sam_postprocess_masks, sam_preprocess

from .aem import AdaptiveExpertMixture, run_decoder
from common.data.seg_answers import REJ_TOKEN, SEG_TOKEN, slot_tokens, special_tokens
from .losses import causal_lm_loss

logger = logging.getLogger(__name__)

@configurable
class LTSE(nn.Module):
    """LLaVA + [SEG]/[REJ] tokens + SAM with an adaptive mixture of expert mask decoders.

    Args:
        llava: the multimodal LLM; its ``new_tokens`` must be ``common.data.seg_answers.special_tokens(use_rej)``.
        sam: SAM's frozen image and prompt encoders (and the decoders' starting weights).
        multi_seg: up to ``max_seg_tokens`` [SEG] per answer (LTSE) or one (LISA-style ablation).
        use_rej: the [REJ] token exists and rejects absent targets.
        max_seg_tokens: M, the most [SEG] tokens an answer may hold (10).
        use_aem: mix ``num_experts`` decoders with a gate (False: one SAM decoder, no gate).
        num_experts, top_k: n and k of the expert mixture (4 and 2).
        gate_heads, gate_mlp_dim: the gate's attention heads and MLP width.

    Every expert starts from SAM's pretrained decoder (when ``sam`` has a checkpoint); their IoU
    heads are frozen, since no loss trains them.
    """

    not_exportable = ("its answer is generated token by token by LLaVA (a loop whose length and number of masks "
                      "depend on the text), which no single TorchScript/ONNX graph holds; serve the checkpoint "
                      "(inferring, scripts/chat.py, MONAI Label or a model-zoo zip from scripts/package.py)")

    def __init__(self, llava: LlavaLM, sam: SamEncoder, multi_seg: bool = True, use_rej: bool = True,
                 max_seg_tokens: int = 10, use_aem: bool = True, num_experts: int = 4, top_k: int = 2,
                 gate_heads: int = 8, gate_mlp_dim: int = 1024):
        super().__init__()
        expected = special_tokens(use_rej)
        if set(llava.token_ids) != set(expected):
            raise ValueError(f"LTSE with use_rej={use_rej} needs llava new_tokens={expected}, "
                             f"got {list(llava.token_ids)}")
        if max_seg_tokens < 1:
            raise ValueError(f"max_seg_tokens must be at least 1, got {max_seg_tokens}")
        self.llava = llava
        self.sam = sam
        self.multi_seg, self.use_rej, self.use_aem = multi_seg, use_rej, use_aem
        self.max_seg_tokens = max_seg_tokens
        self.max_seg = max_seg_tokens if multi_seg else 1
        self.seg_token_id = llava.token_ids[SEG_TOKEN]
        self.rej_token_id = llava.token_ids.get(REJ_TOKEN)
        dim = sam.embed_dim
        self.projector = nn.Sequential(nn.Linear(llava.hidden_size, llava.hidden_size), nn.ReLU(),
                                       nn.Linear(llava.hidden_size, dim))
        if use_aem:
            experts = [self._new_decoder() for _ in range(num_experts)]
            self.aem = AdaptiveExpertMixture(experts, dim, top_k, gate_heads, gate_mlp_dim)
        else:
            self.decoder = self._new_decoder()

    def _new_decoder(self) -> nn.Module:
        decoder = self.sam.new_mask_decoder()
        decoder.iou_prediction_head.requires_grad_(False)
        return decoder

    # ------------------------------------------------------------------ masks
    def _seg_positions(self, input_ids: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        """Per sample, the positions whose hidden state predicts an answer [SEG] (the token before it)."""
        is_seg = input_ids == self.seg_token_id
        if labels is not None:
            is_seg &= labels == self.seg_token_id
        positions = []
        for b, row in enumerate(is_seg):
            found = row.nonzero().squeeze(1)
            if len(found) > self.max_seg:
                raise ValueError(f"sample {b} holds {len(found)} [SEG] tokens; this LTSE takes at most {self.max_seg} "
                                 "(max_seg_tokens, or 1 with multi_seg=false)")
            positions.append(found - 1)
        return positions

    def _mask_head(self, image_embedding, image_pe, sparse, dense) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.use_aem:
            return self.aem(image_embedding, image_pe, sparse, dense)
        return run_decoder(self.decoder, image_embedding, image_pe, sparse, dense), None

    def _output_size(self, b: int, resize_sizes, original_sizes) -> tuple[int, int]:
        sizes = original_sizes if original_sizes is not None else resize_sizes
        if sizes is None:
            return self.sam.image_size, self.sam.image_size
        return int(sizes[b][0]), int(sizes[b][1])

    def _masks(self, hidden: torch.Tensor, positions: Sequence[torch.Tensor], sam_images: torch.Tensor,
               resize_sizes=None, original_sizes=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Masks (n_b, H, W) logits and, with AEM, gate weights (n_b, n) per sample.

        SAM encodes only the images that have a [SEG], one at a time: ViT-H's global attention on a batch of
        two 1024-pixel images holds a (2 x 16, 4096, 4096) score tensor (~3-4 GB), more than a 24 GB GPU spares.
        """
        used = [b for b, p in enumerate(positions) if len(p)]
        embeddings = torch.cat([self.sam.encode_image(sam_images[b: b + 1]) for b in used]) if used else None
        image_pe = self.sam.dense_positional_encoding()
        masks, weights = [], []
        for b, pos in enumerate(positions):
            if not len(pos):
                size = self._output_size(b, resize_sizes, original_sizes)
                masks.append(hidden.new_zeros((0, *size), dtype=torch.float32))
                if self.use_aem:
                    weights.append(hidden.new_zeros((0, len(self.aem.experts)), dtype=torch.float32))
                continue
            sparse, dense = self.sam.encode_text_prompts(self.projector(hidden[b, pos].float()))
            logits, w = self._mask_head(embeddings[used.index(b)][None], image_pe, sparse, dense)
            resize = None if resize_sizes is None else resize_sizes[b]
            original = None if original_sizes is None else original_sizes[b]
            masks.append(sam_postprocess_masks(logits, self.sam.image_size, resize, original)[:, 0])
            if self.use_aem:
                weights.append(w)
        return masks, weights

    # ------------------------------------------------------------------ training / teacher-forced pass
    def forward(self, pixel_values: torch.Tensor, sam_images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                resize_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
                original_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None) -> dict:
        """Teacher-forced pass over prompt + answer.

        Args:
            pixel_values: (B, 3, h, w) LLaVA (CLIP) pixels.
            sam_images: (B, 3, S, S) SAM inputs (``common.networks.sam.sam_preprocess``).
            input_ids, attention_mask, labels: (B, L) from ``tokenize_conversation`` (labels -100 off
                the answer). With labels only the answer's [SEG] tokens count.
            resize_sizes: (B, 2) the resized image inside each SAM input (``sam_preprocess``); None:
                keep the whole padded frame.
            original_sizes: (B, 2) the size masks are returned at (the ground truth's); None: the resized size.

        Returns ``logits`` (B, L, V), ``lm_loss`` (with labels), ``masks`` (list over samples of
        (n_seg, H, W) logits, n_seg possibly 0) and, with AEM, ``expert_weights`` (list of (n_seg, n)).
        """
        hidden, logits = self.llava(input_ids, attention_mask, pixel_values)
        masks, weights = self._masks(hidden, self._seg_positions(input_ids, labels), sam_images, resize_sizes,
                                     original_sizes)
        out = {"logits": logits, "masks": masks}
        if labels is not None:
            out["lm_loss"] = causal_lm_loss(logits, labels)
        if self.use_aem:
            out["expert_weights"] = weights
        return out

    # ------------------------------------------------------------------ inference
    def _answer_slots(self, answer_ids: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """The answer's [SEG]/[REJ] tokens in order and the [SEG] positions, [SEG] beyond the limit dropped."""
        seg_positions = (answer_ids == self.seg_token_id).nonzero().squeeze(1)[: self.max_seg]
        tokens, n_seg = [], 0
        for token in slot_tokens(answer_ids, self.seg_token_id, self.rej_token_id):
            n_seg += token == SEG_TOKEN
            if token == REJ_TOKEN or n_seg <= self.max_seg:
                tokens.append(token)
        return tokens, seg_positions

    @torch.no_grad()
    def generate(self, image: torch.Tensor, instruction: str, max_new_tokens: int = 64, threshold: float = 0.0,
                 **generation_kwargs) -> dict:
        """Answer ``instruction`` about ``image`` and segment each [SEG] of the answer.

        Args:
            image: (3, H, W) RGB in 0-255.
            instruction: the user's text.
            max_new_tokens: answer length limit.
            threshold: mask logit threshold.
            generation_kwargs: passed to Hugging Face ``generate`` (greedy by default).

        Returns ``answer`` (text), ``tokens`` (its [SEG]/[REJ] in order; ``common.data.seg_answers.masks_for_targets``
        maps them to targets), ``masks`` (list of (H, W) bool, one per [SEG]; empty without [SEG])
        and ``mask_logits`` (the same as float logits). The [SEG] hidden states come from one
        teacher-forced pass over prompt + generated answer, the same path as training.
        """
        was_training = self.training
        self.eval()
        try:
            return self._generate(image, instruction, max_new_tokens, threshold, generation_kwargs)
        finally:
            self.train(was_training)

    def _generate(self, image, instruction, max_new_tokens, threshold, generation_kwargs) -> dict:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"generate takes one (3, H, W) RGB image, got shape {tuple(image.shape)}")
        device = self.projector[0].weight.device
        rgb = image.detach().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        batch = tokenize_conversation(self.llava.processor, [rgb], [instruction], template=self.llava.prompt_template)
        sam_image, resize = sam_preprocess(image.to(device), self.sam.image_size)
        return self.answer_and_segment(batch["input_ids"].to(device), batch["pixel_values"].to(device), sam_image,
                                       resize, tuple(image.shape[-2:]), max_new_tokens, threshold,
                                       **generation_kwargs)

    @torch.no_grad()
    def teacher_forced_slots(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, sam_image: torch.Tensor,
                             resize_size: Sequence[int], output_size: Sequence[int], prompt_length: int,
                             threshold: float = 0.0) -> dict:
        """GSVA's evaluation: one pass over prompt + ground-truth answer (``input_ids`` (1, L), no padding); each
        ground-truth [SEG] / [REJ] slot is read at its own position, so a slot the model would drop or add in free
        generation shifts nothing.

        Returns ``tokens``: per ground-truth slot, the token the model predicts there (argmax of the logits at the
        position before it): ``[SEG]``, ``[REJ]`` or ``other``; ``truth_tokens``: the ground-truth slot tokens;
        ``masks`` / ``mask_logits``: per slot, the mask decoded from the hidden state at that position (for every
        slot, [REJ] ones included: a [REJ] slot the model answers with [SEG] is scored with its mask).
        """
        was_training = self.training
        self.eval()
        try:
            hidden, logits = self.llava(input_ids, torch.ones_like(input_ids), pixel_values)
            answer = input_ids[0, prompt_length:]
            is_slot = answer == self.seg_token_id
            if self.rej_token_id is not None:
                is_slot |= answer == self.rej_token_id
            positions = prompt_length + is_slot.nonzero().squeeze(1)
            names = {self.seg_token_id: SEG_TOKEN} | ({self.rej_token_id: REJ_TOKEN} if self.use_rej else {})
            truth = [names[int(i)] for i in input_ids[0, positions]]
            predicted = [names.get(int(i), "other") for i in logits[0, positions - 1].argmax(-1)]
            result = {"tokens": predicted, "truth_tokens": truth, "masks": [], "mask_logits": []}
            if len(positions):
                masks, _ = self._masks(hidden, [positions - 1], sam_image[None], [tuple(resize_size)],
                                       [tuple(output_size)])
                result["mask_logits"] = list(masks[0])
                result["masks"] = [m > threshold for m in masks[0]]
            return result
        finally:
            self.train(was_training)

    @torch.no_grad()
    def answer_and_segment(self, prompt: torch.Tensor, pixel_values: torch.Tensor, sam_image: torch.Tensor,
                           resize_size: Sequence[int], output_size: Sequence[int], max_new_tokens: int = 64,
                           threshold: float = 0.0, **generation_kwargs) -> dict:
        """:meth:`generate` from prepared inputs: prompt ids (1, L), CLIP pixels (1, 3, h, w), the SAM input
        (3, S, S) with the resized size inside it; masks come back at ``output_size``."""
        tokenizer = self.llava.processor.tokenizer
        attention = torch.ones_like(prompt)
        sequences = self.llava.generate(prompt, attention, pixel_values, max_new_tokens=max_new_tokens,
                                        **generation_kwargs)
        answer_ids = sequences[0, prompt.shape[1]:]
        ends = (answer_ids == tokenizer.eos_token_id).nonzero()
        cut = not len(ends) and len(answer_ids) >= max_new_tokens
        if len(ends):
            answer_ids = answer_ids[: ends[0, 0]]
        tokens, seg_positions = self._answer_slots(answer_ids)
        result = {"answer": tokenizer.decode(answer_ids, skip_special_tokens=True).strip(), "tokens": tokens,
                  "masks": [], "mask_logits": [], "cut": cut}
        if cut:
            logger.warning("the answer reached max_new_tokens=%d before its end (%r): targets after the cut count as "
                           "not answered; raise max_new_tokens", max_new_tokens, result["answer"][-80:])
        if not len(seg_positions):
            return result
        full = torch.cat([prompt[0], answer_ids])[None]
        hidden, _ = self.llava(full, torch.ones_like(full), pixel_values)
        masks, _ = self._masks(hidden, [prompt.shape[1] + seg_positions - 1], sam_image[None], [tuple(resize_size)],
                               [tuple(output_size)])
        result["mask_logits"] = list(masks[0])
        result["masks"] = [m > threshold for m in masks[0]]
        return result
