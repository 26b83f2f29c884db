"The exercise checkers: they accept the course's solutions, reject typical wrong answers with specific feedback, never raise."
import json, math, random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paella_nb.exercises as ex
import paella_nb.checkers as checkers
from paella_nb.classroom import load_cells, execute_cells
from paella_nb.exercises import EXERCISES, CHAPTERS
from paella_nb.noising import add_noise, get_loss_weight
from paella_nb.training import paella_loss, ema_update
from paella_nb import unet
from paella_nb.data import COLORS
from paella_nb.small_data import read_shape
from paella_nb.sampling import sampler_loop, sample, PaellaPipeline
from paella_nb import editing

ROOT = Path(__file__).resolve().parent.parent
SOL, STU = ROOT / 'nbs' / 'solutions', ROOT / 'nbs' / 'exercises'
torch.set_num_threads(1)


def run_check(name, work, capsys):
    "Run a checker quietly-safe: returns (result, printed feedback)."
    ok = EXERCISES[name].check(work)
    return ok, capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# the reference solutions: the teacher's-edition definitions, and the course's own functions where they fit
@pytest.fixture(scope='module')
def solutions():
    "Every solution notebook's definitions (import cells and solution cells only: no measurements, no training)."
    ns = {}
    for nb in sorted(SOL.glob('[0-9][0-9]_*.ipynb')):
        cells = [c for c in load_cells(nb) if 'uses your solution' not in c and 'TEACHER ONLY' not in c
                 and (('import' in c and 'def ' not in c) or '### BEGIN SOLUTION' in c)]
        part, problems = execute_cells(cells)
        assert not problems, (nb.name, problems)
        ns.update({k: v for k, v in part.items() if k in EXERCISES})
    return ns


def test_every_exercise_has_a_solution(solutions):
    missing = {n for n, e in EXERCISES.items() if e.kind != 'value'} - set(solutions)
    assert not missing, f"no solution cell defines {missing}"


@pytest.mark.parametrize('name', [n for n, e in EXERCISES.items() if e.kind != 'value'])
def test_accepts_solution(name, solutions, capsys):
    ok, out = run_check(name, solutions[name], capsys)
    assert ok, out
    assert '✓ passed' in out


COURSE = {   # the course's own implementations, adapted to the exercise signatures
    'add_noise': lambda x, t, K: add_noise(x, t, K),
    'loss_weight': get_loss_weight,
    'paella_loss': paella_loss,
    'r_embedding': unet.r_embedding,
    'ResBlock': unet.ResBlock,
    'AttnBlock': unet.AttnBlock,
    'ema_update': ema_update,
    'global_response_norm': lambda x, g, b: _grn(x, g, b),
    'nearest_code': ex._ref_nearest,
    'masked_mean': checkers._ref_masked_mean,
    'read_color': lambda image: read_shape(image)['color'],               # chapter 09's judge
    'sample_blog': lambda model, inputs, shape, uncond, steps=12, renoise_steps=None, temperature=(0.7, 0.3), cfg=3.0:
        sampler_loop(model, torch.randint(0, model.num_labels, shape), inputs, uncond, torch.linspace(1, 0, steps + 1),
                     torch.linspace(*temperature, steps), [cfg] * steps, renoise_steps=renoise_steps),   # chapter 07's loop
    'token_mask': editing.token_mask,
    'structural_edit': lambda *a, **k: _course_edit(*a, **k),                # chapter 10's edit, on a pipeline of the parts
}

def _course_edit(model, vqgan, conditioner, source, prompt, strength=0.5, seed=0, n=1, steps=8, cfg=3.0, temperature=(0.7, 0.3)):
    pipe = PaellaPipeline(model, vqgan, conditioner, latent_size=8)
    kw = dict(n=n, seed=seed, steps=steps, cfg=cfg, temperature=temperature, return_tokens=True)
    if source.is_floating_point(): return editing.edit(pipe, source, prompt, strength, **kw)    # a picture
    return pipe([prompt], init_tokens=source.expand(n, -1, -1), t_start=strength, **kw)      # tokens: what edit does after source_tokens

def _grn(x, g, b):
    m = unet.GlobalResponseNorm(x.shape[-1])
    with torch.no_grad(): m.gamma.copy_(g); m.beta.copy_(b)
    return m(x)

@pytest.mark.parametrize('name', list(COURSE))
def test_accepts_course_implementation(name, capsys):
    ok, out = run_check(name, COURSE[name], capsys)
    assert ok, out


def test_accepts_a_good_report(capsys):
    ok, out = run_check('small_data_report', dict(n_train=[16, 256], train_loss=[1.1, 1.3], val_loss=[1.5, 1.35]), capsys)
    assert ok, out


# ---------------------------------------------------------------------------------------------------------------
# typical wrong answers, each with (part of) the feedback it must get
def _noiser(mask_fn=None, values=None, reshape=True, inplace=False, as_float=False, pair=True):
    def f(x, t, K):
        tt = t[:, None, None] if reshape else t
        mask = mask_fn(x, t) if mask_fn else (torch.rand(x.shape) < tt).long()
        rnd = values(x, K) if values else torch.randint(0, K, x.shape)
        if inplace:
            x[mask.bool()] = rnd[mask.bool()]; out = x
        else: out = torch.where(mask.bool(), rnd, x)
        if as_float: out = out.float()
        return (out, mask) if pair else out
    return f

def _exact_count(x, t):
    B, n = x.shape[0], x[0].numel()
    m = torch.zeros(B, n, dtype=torch.long)
    for b in range(B): m[b, torch.randperm(n)[:int(round(float(t[b]) * n))]] = 1
    return m.view_as(x)

def _loss(ls=0.1, weights='paella', norm='image'):
    def f(logits, target, t, mask, min_val=0.3, label_smoothing=0.1):
        ce = F.cross_entropy(logits, target, label_smoothing=ls, reduction='none')
        w = {'paella': get_loss_weight(t, mask, min_val), 'masked': mask.float(), 'none': torch.ones_like(ce)}[weights]
        if norm == 'batch': return (ce * w).sum() / w.sum()
        if norm == 'hw': return (ce * w).mean()
        if norm == 'vector': return (ce * w).sum((1, 2)) / w.sum((1, 2))
        return ((ce * w).sum((1, 2)) / w.sum((1, 2))).mean()
    return f

def _step(clean=False, noised_target=False, one_t=False, fixed_t=False):
    def f(model, tokens, inputs, t_min=1e-3):
        B = len(tokens)
        t = torch.full((B,), 0.5) if fixed_t else torch.rand(B).clamp(min=t_min)
        if one_t: t = torch.rand(1).clamp(min=t_min)                     # one t for the whole batch, shape [1]
        noised, mask = add_noise(tokens, t.expand(B), model.num_labels)
        logits = model(tokens if clean else noised, t, **inputs)
        return paella_loss(logits, noised if noised_target else tokens, t.expand(B), mask)
    return f

def _sampler(renoise=True, fresh=False, guidance=True, temp_mul=False, argmax=False, bad_ts=False):
    @torch.no_grad()
    def f(model, model_inputs, latent_shape, unconditional_inputs, steps=12, renoise_steps=None, temperature=(0.7, 0.3), cfg=3.0):
        B, K = latent_shape[0], model.num_labels
        x = torch.randint(0, K, latent_shape); start = x.clone()
        ts = torch.linspace(1, 0, steps) if bad_ts else torch.linspace(1, 0, steps + 1)
        temps = torch.linspace(*temperature, steps)
        for i in range(steps):
            t = ts[i].expand(B)
            logits = model(x, t, **model_inputs)
            if guidance and cfg != 1:
                u = model(x, t, **unconditional_inputs); logits = u + cfg * (logits - u)
            logits = logits * temps[i] if temp_mul else logits / temps[i]
            if argmax: x = logits.argmax(1)
            else: x = torch.multinomial(logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, K), 1).view(latent_shape)
            if renoise and i < steps - 1:
                nxt = ts[i + 1] if i + 1 < len(ts) else torch.tensor(0.)
                x = add_noise(x, nxt.expand(B), K, random_x=None if fresh else start)[0]
        return x
    return f

def _tm(mask, f=4, reduce='any'):
    H, W = mask.shape
    blocks = mask.bool().view(H // f, f, W // f, f)
    return blocks.all(3).all(1) if reduce == 'all' else blocks.any(3).any(1)

def _editor(t_start='s', init=True, expand=True, seed=True, global_seed=False, encode=True):
    def f(model, vqgan, conditioner, source, prompt, strength=0.5, seed_=0, n=1, steps=8, cfg=3.0, temperature=(0.7, 0.3)):
        tokens = vqgan.encode_indices(source[None]) if encode and source.is_floating_point() else source.reshape(-1, *source.shape[-2:])
        kw = dict(init_tokens=tokens.expand(n, -1, -1) if expand else tokens) if init else {}
        if t_start: kw['t_start'] = strength if t_start == 's' else 1 - strength
        if global_seed: torch.manual_seed(seed_)
        return sample(model, conditioner([prompt] * n), (n, *tokens.shape[1:]), conditioner.unconditional(n) if cfg != 1 else None,
                      steps=steps, temperature=temperature, cfg=cfg, seed=seed_ if seed else None, **kw)
    def structural_edit(model, vqgan, conditioner, source, prompt, strength=0.5, seed=0, n=1, steps=8, cfg=3.0, temperature=(0.7, 0.3)):
        return f(model, vqgan, conditioner, source, prompt, strength, seed, n, steps, cfg, temperature)
    return structural_edit

def _held_out(eval_mode=True, private=True, restore=True, t_override=None):
    @torch.no_grad()
    def f(model, tokens, inputs, t=0.5, seed=0):
        t = t if t_override is None else t_override
        if private: g = torch.Generator().manual_seed(seed)
        else: torch.manual_seed(seed); g = None
        tt = torch.full((len(tokens),), float(t))
        mask = (torch.rand(tokens.shape, generator=g) < t).long()
        rnd = torch.randint(0, model.num_labels, tokens.shape, generator=g)
        x, mask = add_noise(tokens, tt, model.num_labels, mask=mask, random_x=rnd)
        was = model.training
        if eval_mode: model.eval()
        loss = paella_loss(model(x, tt, **inputs), tokens, tt, mask).item()
        if restore: model.train(was)
        return loss
    return f

def _ema(swap=False, buffers=True, copy=False, no_grad=True):
    def f(e_model, model, decay):
        import contextlib
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            for e, p in zip(e_model.parameters(), model.parameters()):
                if copy: e.copy_(p)
                elif swap: e.mul_(1 - decay).add_(p, alpha=decay)
                else: e.mul_(decay).add_(p, alpha=1 - decay)
            if buffers:
                for e, b in zip(e_model.buffers(), model.buffers()): e.copy_(b)
    return f

class _NoResidual(unet.ResBlock):
    def forward(self, x, x_skip=None):
        if x_skip is not None: x = torch.cat([x, x_skip], 1)
        return self.channelwise(self.norm(self.depthwise(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

class _ExtraLayer(unet.ResBlock):
    def __init__(self, c, c_skip=0, **kw):
        super().__init__(c, c_skip, **kw); self.extra = nn.Linear(c, c)

class _AttnVariant(unet.AttnBlock):
    skip, norm_first, self_attn_flag = True, True, None
    def forward(self, x, cond, attn_weights=None):
        sa = self.self_attn if self.self_attn_flag is None else self.self_attn_flag
        h = self.attention(self.norm(x) if self.norm_first else x, self.kv_mapper(cond), self_attn=sa)
        return x + h if self.skip else h

def _attn(**kw): return type('AttnBlock', (_AttnVariant,), kw)

def _r_emb(swap=False, scale=True):
    def f(r, c_r=64):
        half = c_r // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))
        a = r[:, None] * (10000 if scale else 1) * freqs
        return torch.cat([a.cos(), a.sin()] if swap else [a.sin(), a.cos()], 1)
    return f

def _gn(residual=True, over='hw'):
    def f(x, g, b):
        gx = torch.norm(x, p=2, dim=(1, 2) if over == 'hw' else -1, keepdim=True)
        nx = gx / (gx.mean(-1, keepdim=True) + 1e-6)
        return g * (x * nx) + b + (x if residual else 0)
    return f

def _sim(normalise=True, masked=True):
    def f(encoder, captions):
        s, m = encoder.encode(captions, return_mask=True)
        v = checkers._ref_masked_mean(s, m) if masked else s.mean(1)
        if normalise: v = F.normalize(v, dim=-1)
        return v @ v.T
    return f

def _drop(mode='ok'):
    def f(captions, p, generator=None):
        if mode == 'mutate':
            for i in range(len(captions)):
                if torch.rand(1, generator=generator) < p: captions[i] = ''
            return captions
        if mode == 'batch': return [''] * len(captions) if torch.rand(1, generator=generator) < p else list(captions)
        u = torch.rand(len(captions)) if mode == 'global' else torch.rand(len(captions), generator=generator)
        keep = u >= p if mode != 'inverted' else u < p
        return [c if k else (None if mode == 'none' else '') for c, k in zip(captions, keep.tolist())]
    return f

_PALETTE = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255    # [6, 3]
def _nearest_name(rgb): return list(COLORS)[int(((_PALETTE - rgb) ** 2).sum(1).argmin())]
def _ink_mask(im): return (1 - im).amax(0) > 0.25                              # [H, W]
def _inked(im): return None if _ink_mask(im).sum() < 3 else True

WRONG = [
    # 02
    ('nearest_code', lambda z, cb: torch.cdist(z, cb).argmax(1), 'farthest'),
    ('nearest_code', lambda z, cb: (z @ cb.T).argmax(1), 'largest dot product'),
    ('nearest_code', lambda z, cb: torch.cdist(z, cb).argmin(0), 'one id per *code*'),
    ('nearest_code', lambda z, cb: torch.cdist(z, cb).argmin(1).float(), 'integer token ids'),
    ('straight_through', lambda z, q: q.detach(), 'no gradient can flow'),
    ('straight_through', lambda z, q: q, 'gradient reaching z'),
    ('straight_through', lambda z, q: z, 'forward value is z'),
    ('straight_through', lambda z, q: q + (z - q).detach(), 'forward value is z'),
    ('straight_through', lambda z, q: z + (q - z), 'gradient reaching z'),
    ('perplexity', lambda ids, k: -(lambda p: (p[p > 0] * p[p > 0].log()).sum())(torch.bincount(ids.flatten(), minlength=k) / ids.numel()).item(), 'that is the entropy'),
    ('perplexity', lambda ids, k: -(lambda p: (p[p > 0] * p[p > 0].log2()).sum())(torch.bincount(ids.flatten(), minlength=k) / ids.numel()).item(), 'in bits'),
    ('perplexity', lambda ids, k: float(ids.unique().numel()), 'a skewed histogram'),
    ('codebook_size_sweep', lambda images, ks: [1.0] * len(ks), 'return a dict'),
    ('codebook_size_sweep', lambda images, ks: {k: 0.01 for k in ks}, 'not plausible'),
    ('codebook_size_sweep', lambda images, ks: {k: 40.0 - k for k in ks}, 'course\'s k-means gives'),
    # 03
    ('add_noise', _noiser(values=lambda x, K: torch.full_like(x, K)), '[MASK]-token noiser'),
    ('add_noise', _noiser(mask_fn=lambda x, t: (torch.rand(x.shape) > t[:, None, None]).long()), 'it should replace each token with probability t'),
    ('add_noise', _noiser(mask_fn=lambda x, t: (torch.rand(x.shape) < t.mean()).long()), 't='),
    ('add_noise', _noiser(mask_fn=_exact_count), 'independent coin per token'),
    ('add_noise', _noiser(values=lambda x, K: torch.randint(0, K - 1, x.shape)), 'never appears'),
    ('add_noise', _noiser(as_float=True), 'integer token ids'),
    ('add_noise', _noiser(inplace=True), 'in place'),
    ('add_noise', _noiser(pair=False), 'should return a pair'),
    ('add_noise', _noiser(reshape=False), '[B, 1, 1]'),
    ('add_noise', lambda x, t: x, 'does not fit your signature'),
    ('loss_weight', lambda t, mask, min_val=0.3: mask.float(), 'kept tokens get weight 0'),
    ('loss_weight', lambda t, mask, min_val=0.3: 1 - (1 - mask) * (1 - t) * (1 - min_val), 't[:, None, None]'),
    ('loss_weight', lambda t, mask, min_val=0.3: torch.where(mask == 1, 1.0, t[:, None, None]), 'kept tokens are off'),
    ('cosine_schedule', lambda steps: torch.linspace(1, 0, steps + 1), 'cos(π/2'),
    ('cosine_schedule', lambda steps: torch.cos(torch.linspace(0, 1, steps) * math.pi / 2), 'steps + 1'),
    ('cosine_schedule', lambda steps: torch.sin(torch.linspace(0, 1, steps + 1) * math.pi / 2), 'start at t=1'),
    ('changed_fraction', lambda t, K, n=100_000: add_noise(torch.zeros(1, n, dtype=torch.long), torch.tensor([float(t)]), K)[1].float().mean().item(), 'you measured the mask'),
    ('changed_fraction', lambda t, K, n=100_000: t, 'you measured the mask'),
    # 04
    ('drop_captions', _drop('inverted'), '1 - p'),
    ('drop_captions', _drop('batch'), 'one coin per batch'),
    ('drop_captions', _drop('none'), 'stay a str'),
    ('drop_captions', _drop('mutate'), "changed the caller's list"),
    ('drop_captions', _drop('global'), 'equally seeded generators'),
    ('drop_captions', lambda captions, p, generator=None: tuple('' if random.random() < p else c for c in captions), 'equally seeded'),
    ('pad_stack', lambda seqs: torch.stack([F.pad(s, (0, 0, 7 - len(s), 0)) for s in seqs]) if max(map(len, seqs)) == 7 else seqs[0][None], 'padded at the start'),
    ('pad_stack', lambda seqs: torch.stack([s[:min(map(len, seqs))] for s in seqs]), 'longest L'),
    ('pad_stack', lambda seqs: list(seqs), 'torch.Tensor'),
    ('masked_mean', lambda s, m: s.mean(1), 'includes the padding'),
    ('masked_mean', lambda s, m: (s * m[..., None]).sum(1), 'that is the sum'),
    ('masked_mean', lambda s, m: (s * m[..., None]).mean(1), 'divided by L'),
    ('similarity_matrix', _sim(normalise=False), 'similarity 1 with itself'),
    ('similarity_matrix', _sim(masked=False), 'include the padding positions'),
    # 05
    ('global_response_norm', _gn(residual=False), 'left out the residual'),
    ('global_response_norm', _gn(over='c'), 'over the channels'),
    ('r_embedding', _r_emb(swap=True), 'swapped'),
    ('r_embedding', _r_emb(scale=False), 'max_positions'),
    ('r_embedding', lambda r, c_r=64: torch.zeros(len(r), c_r), 'differs'),
    ('ResBlock', _NoResidual, 'forgot the residual'),
    ('ResBlock', _ExtraLayer, "layers differ from the stub"),
    ('AttnBlock', _attn(skip=False), 'forgot the skip connection'),
    ('AttnBlock', _attn(norm_first=False), 'normalised input'),
    ('AttnBlock', _attn(self_attn_flag=True), 'self_attn'),
    ('AttnBlock', lambda c: None, 'does not fit your signature'),
    # 06
    ('paella_loss', _loss(weights='masked'), 'without the kept-token weight'),
    ('paella_loss', _loss(weights='none'), 'without weights'),
    ('paella_loss', _loss(ls=0.0), 'without label smoothing'),
    ('paella_loss', _loss(norm='batch'), 'normalised over the whole batch'),
    ('paella_loss', _loss(norm='hw'), 'over H·W'),
    ('paella_loss', _loss(norm='vector'), 'single number'),
    ('paella_loss', lambda *a, **k: paella_loss(*a, **k).item(), 'torch.Tensor'),
    ('noised_accuracy', lambda logits, target, mask: (logits.argmax(1) == target).float().mean(), 'accuracy on all tokens'),
    ('training_step', _step(clean=True), 'saw the clean tokens'),
    ('training_step', _step(noised_target=True), 'against the noised tokens'),
    ('training_step', _step(one_t=True), 'one noise level per image'),
    ('training_step', _step(fixed_t=True), 'ranged from'),
    # 07
    ('cfg_logits', lambda c, u, w: c + w * (u - c), 'pushed towards the unconditional'),
    ('cfg_logits', lambda c, u, w: c + w * (c - u), 'started from cond'),
    ('renoise', lambda x, t, s: torch.where(torch.rand(x.shape) < t, torch.randint_like(x, 0, 50), x), '*starting* noise'),
    ('renoise', lambda x, t, s: torch.where(torch.rand(x.shape) < 1 - t, s, x), 'with probability t'),
    ('sample_blog', _sampler(renoise=False), 'forgets the re-noise step'),
    ('sample_blog', _sampler(fresh=True), 'fresh random codes'),
    ('sample_blog', _sampler(guidance=False), 'unconditional inputs should be used'),
    ('sample_blog', _sampler(temp_mul=True), 'temperature'),
    ('sample_blog', _sampler(argmax=True), 'at temperature 1'),
    ('sample_blog', _sampler(bad_ts=True), 'walk t'),
    # 09
    ('held_out_loss', _held_out(eval_mode=False), 'reproducible'),
    ('held_out_loss', _held_out(private=False), 'global random state'),
    ('held_out_loss', _held_out(restore=False), 'left the model in eval mode'),
    ('held_out_loss', _held_out(t_override=1.0), 'noised at t=0.5'),
    ('ema_update', _ema(swap=True), 'averaged weights are wrong'),
    ('ema_update', _ema(buffers=False), 'buffers'),
    ('ema_update', _ema(copy=True), 'just copied'),
    ('ema_update', _ema(no_grad=False), 'torch.no_grad()'),
    ('small_data_report', [1, 2], 'should be the dict'),
    ('small_data_report', dict(n_train=[16, 256], train_loss=[1.0, 1.2]), 'needs the keys'),
    ('small_data_report', dict(n_train=[16, 256], train_loss=[1.6, 1.3], val_loss=[1.4, 1.35]), 'should exceed the training loss'),
    ('read_color', lambda im: _nearest_name(im.mean((1, 2))), 'blank (all-white) canvas'),
    ('read_color', lambda im: _inked(im) and _nearest_name(im.mean((1, 2))), 'judge only the inked pixels'),
    ('read_color', lambda im: _inked(im) and ['red', 'green', 'blue'][int(im[:, _ink_mask(im)].mean(1).argmax())], 'strongest channel'),
    ('read_color', lambda im: _inked(im) and _nearest_name(im[:, _ink_mask(im)].mean(1)), 'the colour most of the ink has'),
    ('read_color', lambda im: _inked(im) and _nearest_name(im[:, _ink_mask(im)].mean(1)).upper(), 'palette names'),
    # 10
    ('token_mask', lambda mask, factor=4: _tm(mask, factor, 'all'), 'any(), not all()'),
    ('token_mask', lambda mask, factor=4: _tm(mask, factor).T, 'rows and columns are swapped'),
    ('token_mask', lambda mask, factor=4: _tm(mask, factor).float(), 'return a bool tensor'),
    ('token_mask', lambda mask, factor=4: _tm(mask, factor).long(), 'gives -1 and -2 on ints'),
    ('token_mask', lambda mask, factor=4: _tm(mask, factor)[None], 'should have shape [H/f, W/f]'),
    ('token_mask', lambda mask, factor=4: _tm(mask.T, factor), 'rows and columns are swapped'),
    ('token_mask', lambda mask, factor=4: mask.reshape(mask.shape[0] // factor, mask.shape[1] // factor, factor, factor).any(-1).any(-1),
     'masked pixels lie in tokens your mask keeps'),
    ('structural_edit', _editor(t_start=None), 'does not depend on the source'),
    ('structural_edit', _editor(t_start=None, init=False), 'does not depend on the source'),
    ('structural_edit', _editor(t_start='1-s'), 't = 1 - strength'),
    ('structural_edit', _editor(expand=False), 'tokens.expand(n, -1, -1)'),
    ('structural_edit', _editor(seed=False), 'global random state instead of `seed`'),
    ('structural_edit', _editor(seed=False, global_seed=True), 'global random state instead of `seed`'),
    ('structural_edit', _editor(encode=False), 'tokenise a picture first'),
]

@pytest.mark.parametrize('name,work,expected', WRONG, ids=[f'{n}-{i}' for i, (n, _, _) in enumerate(WRONG)])
def test_rejects_wrong_answer(name, work, expected, capsys):
    ok, out = run_check(name, work, capsys)
    assert ok is False, out
    assert '✗' in out and expected in out, out


def test_every_checker_has_wrong_answers():
    covered = {n for n, _, _ in WRONG}
    assert covered == set(EXERCISES), set(EXERCISES) - covered
    print(f"{len(WRONG)} typical wrong answers over {len(EXERCISES)} checkers")


# ---------------------------------------------------------------------------------------------------------------
# a checker never raises on a student's mistake
def _raises(*a, **k): raise ValueError("boom in the student's code")
def _not_impl(*a, **k): raise NotImplementedError
class _BadModule(nn.Module):
    def __init__(self, *a, **k): raise RuntimeError("broken __init__")

BAD = {'None': None, 'no arguments': lambda: 0, 'returns a string': lambda *a, **k: 'hello',
       'raises': _raises, 'not implemented': _not_impl, 'broken class': _BadModule, 'an int': 3}

@pytest.mark.parametrize('name', list(EXERCISES))
def test_never_raises(name, capsys):
    for what, work in BAD.items():
        ok, out = run_check(name, work, capsys)
        assert ok is False, (what, out)
        assert '✗' in out, (what, out)
    ok, out = run_check(name, _not_impl, capsys)
    if EXERCISES[name].kind != 'value': assert 'not implemented yet' in out


def test_feedback_names_the_students_line(capsys):
    def add_noise_bug(x, t, K):
        mask = torch.rand(x.shape) < t[:, None, None]
        return torch.where(mask, torch.randint(0, K, x.shape), x), mask.long().undefined_method()
    ok, out = run_check('add_noise', add_noise_bug, capsys)
    assert not ok and 'AttributeError' in out and 'undefined_method' in out and 'of your code' in out


def test_strict_mode_raises(capsys):
    ex.STRICT = True
    try:
        with pytest.raises(AssertionError, match='cfg_logits'): ex.check_cfg_logits(lambda c, u, w: c)
        assert ex.check_cfg_logits(lambda c, u, w: u + w * (c - u))
    finally: ex.STRICT = False


def test_checks_leave_global_rng_alone():
    torch.manual_seed(123); a = torch.rand(3)
    torch.manual_seed(123); ex.check_add_noise(lambda x, t, K: add_noise(x, t, K), verbose=False); b = torch.rand(3)
    assert torch.equal(a, b)


def test_exercise_counts():
    for ch in CHAPTERS: assert 2 <= len(ex.exercises_for([ch])) <= 4, ch
    assert ex.chapter_of('03_noising.ipynb') == '03' and ex.chapter_of('alice-07_sampler.ipynb') == '07'
    assert ex.chapter_of('notes.ipynb') is None
    assert 'sample_blog' in ex.exercise_table()


# ---------------------------------------------------------------------------------------------------------------
# the two editions
def test_student_notebooks_are_generated_from_solutions():
    sols = sorted(p.name for p in SOL.glob('[0-9][0-9]_*.ipynb'))
    assert sols == sorted(p.name for p in STU.glob('[0-9][0-9]_*.ipynb')) == [f'{nb}.ipynb' for nb, _ in CHAPTERS.values()]
    for name in sols:
        want = [(c['cell_type'], ''.join(c['source'])) for c in ex.make_student_notebook(SOL / name)['cells']]
        have = [(c['cell_type'], ''.join(c['source'])) for c in json.loads((STU / name).read_text())['cells']]
        assert want == have, f"nbs/exercises/{name} is out of date: run paella_nb.exercises.sync_student_notebooks()"


@pytest.mark.parametrize('name', [f'{nb}.ipynb' for nb, _ in CHAPTERS.values()])
def test_student_notebook_has_stubs_and_flagged_checks(name):
    cells = load_cells(STU / name)
    text = '\n'.join(cells)
    assert 'BEGIN SOLUTION' not in text and 'TEACHER ONLY' not in text and 'STRICT' not in text
    md = json.loads((STU / name).read_text())['cells']
    assert not any('BEGIN TEACHER' in ''.join(c['source']) or 'BEGIN SOLUTION' in ''.join(c['source']) for c in md)
    chapter = ex.chapter_of(name)
    for e in ex.exercises_for([chapter]):
        if e.kind == 'value': continue
        assert any(f'def {e.name}(' in c or f'class {e.name}(' in c for c in cells), e.name
    for c in cells:   # every cell that needs the student's work is skipped by CI
        if ex._NEEDS_WORK.search(c): assert c.startswith('#| exercise'), c
        if 'NotImplementedError' in c and 'def ' not in c: assert c.startswith('#| exercise'), c
    ns, problems = execute_cells([c for c in cells if not c.startswith('#| exercise')])
    assert not problems, problems
    for e in ex.exercises_for([chapter]):
        if e.kind != 'value': assert e.check(ns[e.name], verbose=False) is False


def test_run_checks_on_a_namespace(capsys):
    ns = {'cfg_logits': lambda c, u, w: u + w * (c - u), 'renoise': lambda x, t, s: x, 'add_noise': add_noise}
    res = ex.run_checks(ns)          # add_noise is the course's own: not counted as the student's
    assert res == {'cfg_logits': True, 'renoise': False, 'sample_blog': None}
    assert 'missing' in capsys.readouterr().out
