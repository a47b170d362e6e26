#!/usr/bin/env python
"""Train the embedded demo captioner: a tiny GitForCausalLM on the synthetic shapes world.

Deterministic (seeded), CPU-only, runs once; its result is exported to ``engines/shapes-git``
and committed. The smoke mode (``--smoke``) runs a few steps for CI and checks the loss falls.

Recipe (see docs/training.md for the learning curve):
- 64-px frames, 16-px patches: 17 image tokens per frame, 6 frames per clip (102 tokens);
- curriculum: 600 steps of one object with large motions, then 900 steps of mostly one object,
  then one or two objects (40/60) with 15 % clips that straddle a scene cut (captioned by the
  scene holding most frames) so live windows that cross a cut caption the new scene early;
- auxiliary heads on the projected visual tokens (training only, never exported): dense
  per-patch colour/shape labels (what covers each 16-px patch) and clip-level colour/shape/
  motion per object slot. They make the vision tower encode what the caption needs before the
  decoder has learnt to look (without the dense heads a first run plateaued at LM loss ~0.51
  after 1350 steps: docs/training.md); per-patch regression of the covering object's centre
  and of its absolute position, and per-frame regression of both objects' centres on each
  frame's CLS token: with these, positions are linearly readable from the visual tokens and
  the decoder can compare them across frames (a third run had learnt colour, shape and the
  sub-patch offset, but a head reading mean-pooled tokens stayed at chance on motion); and a
  motion head on the decoder's own hidden state at each frame's CLS position, so the decoder
  learns to compare frames in its image-token layers and the caption only has to read it;
- per-frame temporal embeddings initialised at random, not at zero (see main()).
- clips are rendered up front into uint8 pools by worker processes.

Usage (the committed model, about 60 min on 2 cores; see docs/training.md):
    python tools/train_shapes.py --steps 3600 --batch 32 --pool 20000
    python tools/train_shapes.py --resume-from runs/shapes-git/checkpoint --steps 1500 --batch 32 \
        --pool 12000 --lr 5e-4 --workdir runs/shapes-git-cont --out engines/shapes-git
CI smoke run: python tools/train_shapes.py --smoke --steps 20
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamcap.demo import synthetic as syn  # noqa: E402
from streamcap.engine.preprocess import Preprocessing, normalise  # noqa: E402

FRAMES = 6
IMAGE_SIZE = 64
PATCH = 16
WINDOW_S = 2.0
PRE = Preprocessing(IMAGE_SIZE)
CANVASES = ((96, 96, 1.0), (128, 96, 4 / 3))
COLOURS = syn.COLOUR_NAMES
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
MAX_TEXT = 16


# ----------------------------------------------------------------------------- data


GRID = IMAGE_SIZE // PATCH  # patches per side


def _patch_labels(scene: syn.Scene, t_s: float, w: int, h: int) -> np.ndarray:
    """Per patch of the model's input: colour class, shape class (0 = background) of the object
    covering most of it (at least a fifth of the patch), that object's centre relative to the
    patch centre in patch units (dx, dy) and in the whole image (x, y in [0, 1]); zeros for
    background → float32 (GRID*GRID, 6)."""
    import cv2

    lm = cv2.resize(syn.render_label_map(scene, t_s, w, h), (IMAGE_SIZE, IMAGE_SIZE),
                    interpolation=cv2.INTER_NEAREST)
    blocks = lm.reshape(GRID, PATCH, GRID, PATCH).transpose(0, 2, 1, 3).reshape(GRID * GRID, -1)
    out = np.zeros((GRID * GRID, 6), np.float32)
    cover = np.stack([(blocks == i + 1).sum(1) for i in range(len(scene.objects))])  # (n_obj, P)
    best = cover.argmax(0)
    unit = min(w, h)
    sx = w / (scene.aspect * unit)
    for p_i in np.nonzero(cover.max(0) >= PATCH * PATCH // 5)[0]:
        obj = scene.objects[best[p_i]]
        cx, cy = obj.centre(t_s)
        mx, my = cx * unit * sx * IMAGE_SIZE / w, cy * unit * IMAGE_SIZE / h  # model pixels
        px, py = (p_i % GRID + 0.5) * PATCH, (p_i // GRID + 0.5) * PATCH
        out[p_i] = [COLOURS.index(obj.colour) + 1, syn.SHAPES.index(obj.shape) + 1,
                    (mx - px) / PATCH, (my - py) / PATCH, mx / IMAGE_SIZE, my / IMAGE_SIZE]
    return out


def _render_one(args: tuple) -> tuple[np.ndarray, str, np.ndarray, np.ndarray]:
    """Render one training clip → (frames uint8 (K,64,64,3), caption, aux labels (6,),
    per-frame dense targets float32 (K, GRID*GRID*6 + 4): see _patch_labels, then the two
    object slots' centres)."""
    import cv2

    seed, kind, jpeg_p = args
    rng = np.random.default_rng(seed)
    w, h, aspect = CANVASES[int(rng.integers(len(CANVASES)))]
    if kind == "easy":
        scene = syn.sample_scene(rng, n_objects=1, speed_range=(0.09, 0.15), aspect=aspect)
    elif kind == "single":
        scene = syn.sample_scene(rng, n_objects=1, speed_range=(0.05, 0.15), aspect=aspect)
    else:
        scene = syn.sample_scene(rng, n_objects=int(rng.choice([1, 2], p=[0.4, 0.6])),
                                 speed_range=(0.05, 0.15), aspect=aspect)
    jitter = rng.uniform(-0.04, 0.04, FRAMES)
    jitter[0] = 0.0
    times = [t + j for t, j in zip(syn.clip_times(WINDOW_S, FRAMES), jitter)]
    noise = float(rng.uniform(2, 10))
    frames = list(syn.render_clip(scene, times, w, h, noise_seed=seed, noise_std=noise))
    frame_scenes = [scene] * FRAMES
    if kind == "cut":  # 1 or 2 frames at one end come from another scene
        other = syn.sample_scene(rng, aspect=aspect)
        j = int(rng.integers(1, 3))
        o_frames = syn.render_clip(other, times, w, h, noise_seed=seed + 1, noise_std=noise)
        if rng.random() < 0.5:
            frames[:j] = o_frames[:j]
            frame_scenes[:j] = [other] * j
            first = j
        else:
            frames[FRAMES - j:] = o_frames[FRAMES - j:]
            frame_scenes[FRAMES - j:] = [other] * j
            first = 0
        caption = scene.caption(times[first])
        ordered = scene.ordered(times[first])
    else:
        caption = scene.caption(0.0)
        ordered = scene.ordered(0.0)
    # Live video arrives H.264-compressed with 4:2:0 chroma; JPEG at a random quality gives the
    # same kind of blocking and colour bleed, cheaply, on a share of the clips.
    quality = int(rng.integers(25, 86)) if rng.random() < jpeg_p else 0
    out = []
    for f in frames:
        if quality:
            ok, buf = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])
            f = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else f
        if rng.random() < 0.3:
            f = cv2.GaussianBlur(f, (3, 3), float(rng.uniform(0.3, 1.0)))
        out.append(cv2.resize(f, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA))
    aux = np.full(6, -1, np.int64)
    for slot in range(2):
        if slot < len(ordered):
            o = ordered[slot]
            aux[slot * 3:slot * 3 + 3] = [COLOURS.index(o.colour), syn.SHAPES.index(o.shape),
                                          syn.MOTIONS.index(o.motion)]
        else:  # "no object" class
            aux[slot * 3:slot * 3 + 3] = [len(COLOURS), len(syn.SHAPES), len(syn.MOTIONS)]
    patches = np.stack([_patch_labels(sc, t, w, h) for sc, t in zip(frame_scenes, times)])
    # per frame: centres (x, y in [0, 1]) of the frame's objects, left first; -1 when absent
    slots = np.full((FRAMES, 4), -1.0, np.float32)
    for k, (sc, t) in enumerate(zip(frame_scenes, times)):
        for j, o in enumerate(sc.ordered(times[0])[:2]):
            cx, cy = o.centre(t)
            slots[k, 2 * j:2 * j + 2] = [cx / sc.aspect, cy]
    return np.stack(out), caption, aux, np.concatenate([patches.reshape(FRAMES, -1), slots], 1)


def render_pool(n: int, seed: int, kinds: list[tuple[str, float]], workers: int,
                jpeg_p: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    names = [k for k, _ in kinds]
    probs = np.array([p for _, p in kinds])
    choice = rng.choice(len(names), size=n, p=probs / probs.sum())
    jobs = [(int(seed * 1_000_003 + i), names[c], jpeg_p) for i, c in enumerate(choice)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            items = pool.map(_render_one, jobs, chunksize=256)
    else:
        items = [_render_one(j) for j in jobs]
    return {
        "frames": np.stack([it[0] for it in items]),
        "captions": [it[1] for it in items],
        "aux": np.stack([it[2] for it in items]),
        "patches": np.stack([it[3] for it in items]),
    }


# ----------------------------------------------------------------------------- model


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS + list(syn.VOCABULARY))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.add_special_tokens(SPECIALS)  # so decode(skip_special_tokens=True) drops them
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tok, vocab


def build_model(vocab: dict):
    from transformers import GitConfig, GitForCausalLM

    cfg = GitConfig(
        vision_config={
            "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": IMAGE_SIZE, "patch_size": PATCH,
            "num_channels": 3,
        },
        vocab_size=len(vocab), hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=32, num_image_with_embedding=FRAMES,
        pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"],
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, tie_word_embeddings=False,
    )
    return GitForCausalLM(cfg)


def build_aux(hidden: int):
    from torch import nn

    class AuxHeads(nn.Module):
        """Training-only heads reading the projected visual tokens (never exported)."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(FRAMES * hidden, 256), nn.GELU())
            sizes = [len(COLOURS) + 1, len(syn.SHAPES) + 1, len(syn.MOTIONS) + 1] * 2
            self.heads = nn.ModuleList(nn.Linear(256, s) for s in sizes)
            # dense per-patch heads: what covers this patch (background, colour, shape)
            self.patch_colour = nn.Linear(hidden, len(COLOURS) + 1)
            self.patch_shape = nn.Linear(hidden, len(syn.SHAPES) + 1)
            self.patch_offset = nn.Linear(hidden, 4)  # where the covering object's centre is
            self.cls_slots = nn.Linear(hidden, 4)  # per frame, on CLS: both objects' centres
            # on the decoder's last hidden state at each frame's CLS position: the clip's motions
            self.dec_motion = nn.Linear(hidden, 2 * (len(syn.MOTIONS) + 1))

        def forward(self, vis):  # vis: (B, K*T, H)
            b = vis.shape[0]
            v = vis.view(b, FRAMES, -1, vis.shape[-1])
            z = self.body(v[:, :, 0].reshape(b, -1))  # the frames' CLS tokens
            tokens = v[:, :, 1:]
            return ([h(z) for h in self.heads], self.patch_colour(tokens), self.patch_shape(tokens),
                    self.patch_offset(tokens), self.cls_slots(v[:, :, 0]))

    return AuxHeads()


# ----------------------------------------------------------------------------- eval


def greedy_exact_match(model, frames_u8: np.ndarray, captions: list[str], tok, vocab,
                       batch: int = 100) -> tuple[float, list[str]]:
    import torch

    preds: list[str] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(frames_u8), batch):
            px = torch.from_numpy(normalise(frames_u8[i:i + batch], PRE))
            ids = torch.full((px.shape[0], 1), vocab["[CLS]"], dtype=torch.long)
            out = model.generate(pixel_values=px, input_ids=ids, max_length=MAX_TEXT,
                                 do_sample=False, num_beams=1)
            preds += [tok.decode(o.tolist(), skip_special_tokens=True) for o in out]
    model.train()
    em = float(np.mean([p == c for p, c in zip(preds, captions)]))
    return em, preds


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=45.0, help="training wall-time budget")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pool", type=int, default=40000, help="clips rendered for the main pool")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "shapes-git"))
    ap.add_argument("--out", default=str(ROOT / "engines" / "shapes-git"))
    ap.add_argument("--smoke", action="store_true", help="a few steps on a tiny pool; no export")
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (overrides --minutes)")
    ap.add_argument("--probe", type=int, default=0,
                    help="experiment: train N steps on one-object clips only and log aux parts")
    ap.add_argument("--resume-from", metavar="CHECKPOINT",
                    help="continue from a saved checkpoint on the last stage only (fresh main pool "
                         "rendered with seed+10; aux heads restored when aux_heads.pt is beside it)")
    ap.add_argument("--jpeg-p", type=float, default=0.0,
                    help="share of training clips passed through JPEG at a random quality (25-85)")
    ap.add_argument("--motion-weight", type=float, default=1.0,
                    help="weight of the motion words in the caption loss (1 = plain LM loss)")
    ap.add_argument("--shape-weight", type=float, default=1.0,
                    help="weight of the shape words (circle, square, triangle) in the caption loss")
    ap.add_argument("--export-only", action="store_true",
                    help="re-export the checkpoint in --workdir without training")
    args = ap.parse_args(argv)

    import torch

    if args.export_only:
        return export(Path(args.workdir), Path(args.out))
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    workers = 1 if args.smoke else max(1, os.cpu_count() or 1)
    t_start = time.time()

    tok, vocab = build_tokenizer()
    if args.resume_from:
        from transformers import GitForCausalLM

        model = GitForCausalLM.from_pretrained(args.resume_from)
        model.train()
    else:
        model = build_model(vocab)
    # GIT initialises the per-frame temporal embeddings to zero, so at first the decoder cannot
    # tell frames apart and has no gradient path to learn motion (a second run learnt colour and
    # shape but no motion in 1000 steps). Random init gives each frame its own signature.
    if not args.resume_from:
        with torch.no_grad():
            for p in model.git.img_temporal_embedding:
                p.normal_(0.0, 0.3)
    aux = build_aux(model.config.hidden_size)
    aux_state = Path(args.resume_from or "/nonexistent").parent / "aux_heads.pt"
    if args.resume_from and aux_state.is_file():
        aux.load_state_dict(torch.load(aux_state))
    captured = {}
    model.git.visual_projection.register_forward_hook(lambda m, i, o: captured.__setitem__("vis", o))

    if args.probe:
        easy = render_pool(4000, args.seed, [("easy", 1.0)], workers)
        mid = main_pool = easy
        n_easy_steps = n_mid_steps = total_steps = args.probe
    elif args.resume_from:
        print("rendering the main pool ...", flush=True)
        easy = mid = main_pool = render_pool(args.pool, args.seed + 10, [("mixed", 0.85), ("cut", 0.15)],
                                             workers, jpeg_p=args.jpeg_p)
        n_easy_steps = n_mid_steps = 0
        total_steps = args.steps
    elif args.smoke:
        easy = render_pool(96, args.seed, [("easy", 1.0)], 1)
        main_pool = easy
        mid = easy
        n_easy_steps, n_mid_steps, total_steps = 0, 0, args.steps or 12
    else:
        print("rendering pools ...", flush=True)
        easy = render_pool(6000, args.seed, [("easy", 1.0)], workers)
        mid = render_pool(8000, args.seed + 2, [("single", 0.7), ("mixed", 0.3)], workers)
        main_pool = render_pool(args.pool, args.seed + 1, [("mixed", 0.85), ("cut", 0.15)], workers,
                                jpeg_p=args.jpeg_p)
        print(f"pools ready in {time.time() - t_start:.0f}s", flush=True)
        total_steps = args.steps
        n_easy_steps, n_mid_steps = 600, 1500
    held = render_pool(64 if args.smoke or args.probe else 500, 999_999, [("mixed", 1.0)], 1 if args.smoke else workers)

    motion_ids = torch.zeros(len(vocab), dtype=torch.bool)
    for word in ("moves", "stays", "left", "right", "up", "down", "still"):
        motion_ids[vocab[word]] = True
    shape_ids = torch.zeros(len(vocab), dtype=torch.bool)
    for word in syn.SHAPES:
        shape_ids[vocab[word]] = True
    params = list(model.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    budget_s = args.minutes * 60.0
    train_t0 = time.time()
    curve: list[dict] = []
    step = 0
    warmup = 50 if args.resume_from else 150
    ema = None
    first_loss = None
    aux_weight = 0.5

    def lr_at(step: int, frac: float) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    while True:
        elapsed = time.time() - train_t0
        frac = step / total_steps if total_steps else elapsed / budget_s
        if frac >= 1.0:
            break
        pool = easy if step < n_easy_steps else mid if step < n_mid_steps else main_pool
        idx = rng.integers(0, len(pool["captions"]), size=args.batch)
        px = torch.from_numpy(normalise(pool["frames"][idx], PRE))
        enc = tok.encode_batch([pool["captions"][i] for i in idx])
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        labels = ids.clone()
        labels[ids == vocab["[PAD]"]] = -100
        attn = (ids != vocab["[PAD]"]).long()
        out = model(input_ids=ids, attention_mask=attn, pixel_values=px, labels=labels,
                    output_hidden_states=True)
        aux_logits, p_col, p_shape, p_off, p_slots = aux(captured["vis"])
        aux_t = torch.from_numpy(pool["aux"][idx])
        dense = torch.from_numpy(pool["patches"][idx])  # (B, K, P*6 + 4)
        patch_t = dense[..., :-4].reshape(dense.shape[0], FRAMES, GRID * GRID, 6)
        slots_t = dense[..., -4:]
        present = (slots_t >= 0).float()
        slot_loss = (torch.nn.functional.smooth_l1_loss(p_slots, slots_t.clamp(min=0), reduction="none",
                                                        beta=0.05) * present).sum() / present.sum().clamp(min=1.0)
        ce = torch.nn.functional.cross_entropy
        col_t, shape_t = patch_t[..., 0].long(), patch_t[..., 1].long()
        covered = (col_t > 0).unsqueeze(-1).float()
        off_loss = (torch.nn.functional.smooth_l1_loss(p_off, patch_t[..., 2:], reduction="none", beta=0.05)
                    * covered).sum() / covered.sum().clamp(min=1.0)
        parts = {"aux_motion0": float(ce(aux_logits[2], aux_t[:, 2]).detach()),
                 "aux_colour0": float(ce(aux_logits[0], aux_t[:, 0]).detach()),
                 "offset": float(off_loss.detach()), "slots": float(slot_loss.detach())}
        n_tok = captured["vis"].shape[1] // FRAMES
        dec_cls = out.hidden_states[-1][:, :FRAMES * n_tok].reshape(ids.shape[0], FRAMES, n_tok, -1)[:, :, 0]
        dm = aux.dec_motion(dec_cls).reshape(ids.shape[0], FRAMES, 2, -1)  # (B, K, slot, class)
        dec_motion_loss = (ce(dm[:, :, 0].reshape(-1, dm.shape[-1]), aux_t[:, 2].repeat_interleave(FRAMES))
                           + ce(dm[:, :, 1].reshape(-1, dm.shape[-1]), aux_t[:, 5].repeat_interleave(FRAMES))) / 2
        parts["dec_motion"] = float(dec_motion_loss.detach())
        aux_loss = sum(ce(lg, aux_t[:, j]) for j, lg in enumerate(aux_logits)) / 6 + dec_motion_loss
        aux_loss = aux_loss + 0.5 * (ce(p_col.reshape(-1, p_col.shape[-1]), col_t.reshape(-1))
                                     + ce(p_shape.reshape(-1, p_shape.shape[-1]), shape_t.reshape(-1))) + off_loss + 2.0 * slot_loss
        lm_loss = out.loss
        if args.motion_weight != 1.0 or args.shape_weight != 1.0:  # GIT's shifted CE, some words weighted up
            n_img = out.logits.shape[1] - ids.shape[1]
            tok_ce = ce(out.logits[:, n_img:-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1),
                        reduction="none")
            target = labels[:, 1:].clamp(min=0)
            w = torch.where(motion_ids[target], args.motion_weight, 1.0)
            w = torch.where(shape_ids[target], args.shape_weight, w).reshape(-1)
            w = w * (labels[:, 1:].reshape(-1) != -100)
            lm_loss = (tok_ce * w).sum() / w.sum()
        loss = lm_loss + aux_weight * aux_loss
        for g in opt.param_groups:
            g["lr"] = lr_at(step, frac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lm = float(out.loss.detach())
        first_loss = lm if first_loss is None else first_loss
        ema = lm if ema is None else 0.95 * ema + 0.05 * lm
        step += 1
        if step % 25 == 0 or step == 1:
            rec = {"step": step, "minutes": round((time.time() - train_t0) / 60, 2),
                   "lm_loss": round(lm, 4), "lm_loss_ema": round(ema, 4), "aux_loss": round(float(aux_loss.detach()), 4),
                   "lr": round(lr_at(step, frac), 6), **{k: round(v, 4) for k, v in parts.items()}}
            if not args.smoke and (step % 500 == 0 or (args.probe and step % 200 == 0)):
                em, _ = greedy_exact_match(model, held["frames"][:200], held["captions"][:200], tok, vocab)
                rec["heldout_exact_match_200"] = em
            curve.append(rec)
            print(json.dumps(rec), flush=True)

    em, preds = greedy_exact_match(model, held["frames"], held["captions"], tok, vocab)
    summary = {
        "steps": step, "batch": args.batch, "seed": args.seed,
        "train_minutes": round((time.time() - train_t0) / 60, 2),
        "total_minutes": round((time.time() - t_start) / 60, 2),
        "first_lm_loss": first_loss, "final_lm_loss_ema": ema,
        "heldout_exact_match": em, "heldout_clips": len(preds), "cpu_count": os.cpu_count(),
    }
    print(json.dumps(summary), flush=True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "curve.json").write_text(json.dumps({"summary": summary, "curve": curve}, indent=1))
    if args.smoke or args.probe:
        return 0 if ema is not None and ema < first_loss else 1
    model.save_pretrained(work / "checkpoint")
    torch.save(aux.state_dict(), work / "aux_heads.pt")
    return export(work, Path(args.out))


def export(work: Path, out: Path) -> int:
    """Export ``work/checkpoint`` (tokenizer rebuilt from the grammar) into the engine folder."""
    from streamcap.export.git import export_git

    ckpt = work / "checkpoint"
    tok, _ = build_tokenizer()
    _save_hf_tokenizer(tok, ckpt)
    summary = json.loads((work / "curve.json").read_text())["summary"]
    export_git(ckpt, out, preprocessing=PRE, window_s=WINDOW_S, max_new_tokens=MAX_TEXT,
               extra={"training": summary, "trained_on": "synthetic shapes world (tools/train_shapes.py)"})
    print(f"exported to {out}", flush=True)
    return 0


def _save_hf_tokenizer(tok, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", bos_token="[CLS]", eos_token="[SEP]")
    fast.save_pretrained(folder)


if __name__ == "__main__":
    raise SystemExit(main())
