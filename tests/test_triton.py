"""Maata's models on a real ``tritonserver`` (the one the nvidia-pytriton wheel bundles, CPU,
python backend), started once for the module on free ports from a repository that
``maata triton export`` writes from the committed demo checkpoints.

* the export is deterministic and its configs parse with tritonclient's ModelConfig schema;
* codec and S2S on Triton equal the in-process models (codes exactly, audio within 1e-5);
* concurrent calls are isolated (each equals the same call alone), joining and leaving at any frame;
* bad input gets a clear error and harms no other sequence;
* the generation service on the Triton backend: Triton killed mid-call -> the call ends
  UNAVAILABLE with the resume hint and the service goes NOT_SERVING; Triton restarted -> the
  call resumes from the session store (no stored frame lost) exactly as if uninterrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import filecmp
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maata.checkpoint import load_codec, save_model
from maata.lm import LM, SamplingParams, load_preset
from maata.lm.checkpoint import load_lm
from maata.served import SERVED_CODEC, SERVED_LM
from services.codec.engine import DecoderLane, EncoderLane
from services.common.config import ServerConfig
from services.common.errors import RESUME_HINT
from services.common.model_backend import ModelBackendConfig
from services.generation.engine import CallSpec, GenerationEngine
from services.generation.service import GenerationServiceConfig, serve_generation
from services.session import MemorySessionStore
from services.triton.client import (TritonInputError, TritonModels, TritonUnavailableError, new_sequence_id,
                                    utf8)
from services.triton.export import ExportConfig, export_repository, validate_repository
from services.triton.launcher import TritonServer, batch_stats

from maata_protos.v1.common_pb2 import CodeFrame, Sampling, Style
from maata_protos.v1.generation_pb2 import CallConfig, UserFrame
from maata_protos.v1.generation_pb2_grpc import GenerationStub

ROOT = Path(__file__).resolve().parents[1]
CODEC_CKPT = ROOT / SERVED_CODEC
LM_CKPT = ROOT / SERVED_LM
SLOTS = 4
TIMEOUT = 30.0

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    export_repository(out, CODEC_CKPT, LM_CKPT, ExportConfig(slots=SLOTS, threads=1))
    return out


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    with TritonServer(repo, work_dir=tmp_path_factory.mktemp("triton-work")) as s:
        yield s


@pytest.fixture(scope="module")
def codec():
    return load_codec(CODEC_CKPT)


@pytest.fixture(scope="module")
def lm() -> LM:
    return load_lm(LM_CKPT)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


# -- export -------------------------------------------------------------------------------------------
def test_export_is_deterministic_and_configs_parse(repo: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    export_repository(again, CODEC_CKPT, LM_CKPT, ExportConfig(slots=SLOTS, threads=1))
    files = sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 15  # 3 x (config, model.py, weights, 2 warmup files)
    _, mismatch, errors = filecmp.cmpfiles(repo, again, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    configs = validate_repository(repo)
    assert set(configs) == {"codec_encoder", "codec_decoder", "s2s_step"}
    for cfg in configs.values():
        assert cfg.backend == "python" and cfg.max_batch_size == SLOTS
        assert cfg.sequence_batching.max_sequence_idle_microseconds == 15_000_000  # > the 10 s call idle timeout
        assert [c.name for c in cfg.sequence_batching.control_input] == ["START", "END", "READY", "CORRID"]
        assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
        assert cfg.model_warmup[0].batch_size == 1 and cfg.version_policy.latest.num_versions == 1
    gpu = tmp_path / "gpu"
    export_repository(gpu, CODEC_CKPT, LM_CKPT, ExportConfig(kind="gpu", dtype="bfloat16", cuda_graphs=True,
                                                             instances=2))
    s2s = validate_repository(gpu)["s2s_step"]
    assert s2s.instance_group[0].kind == s2s.instance_group[0].KIND_GPU and s2s.instance_group[0].count == 2
    assert s2s.parameters["dtype"].string_value == "bfloat16" and s2s.parameters["cuda_graphs"].string_value == "true"
    with pytest.raises(ValueError, match="cuda_graphs needs kind=gpu"):
        ExportConfig(cuda_graphs=True)
    with pytest.raises(ValueError, match="idle timeout"):
        ExportConfig(idle_s=5.0)
    # a codec and an LM that do not fit together are refused
    torch.manual_seed(0)
    small = LM(load_preset("tiny", env_prefix=None, codebook_size=32))
    save_model(tmp_path / "small_lm.safetensors", small, small.cfg, kind="lm")
    with pytest.raises(ValueError, match="the LM models .* codes but the codec has"):
        export_repository(tmp_path / "bad", CODEC_CKPT, tmp_path / "small_lm.safetensors")
    (repo / "s2s_step" / "config.pbtxt").read_text()  # the module's repo is untouched by all this
    broken = tmp_path / "broken"
    export_repository(broken, CODEC_CKPT, LM_CKPT)
    (broken / "codec_decoder" / "config.pbtxt").write_text("name: 'codec_decoder'\nmax_batch_size: x\n")
    with pytest.raises(ValueError, match="not a valid ModelConfig"):
        validate_repository(broken)


# -- codec ----------------------------------------------------------------------------------------------
def test_codec_on_triton_equals_in_process_concurrent_streams(server: TritonServer, codec) -> None:
    """Three streams join at frames 0, 2 and 3 and one leaves at frame 5; every stream's codes
    equal the in-process lane's exactly, its decoded audio within 1e-5."""
    hop, F = codec.hop, 8
    g = torch.Generator().manual_seed(3)
    pcm = [0.1 * torch.randn(F * hop, generator=g) for _ in range(3)]
    joins, leaves = [0, 2, 3], [F, 5, F]

    def reference(x: torch.Tensor, frames: range) -> tuple[np.ndarray, np.ndarray]:
        enc, dec = EncoderLane(codec, 1), DecoderLane(codec, 1)
        e, d = enc.open(), dec.open()
        codes, audio = [], []
        with torch.no_grad():
            for f in frames:
                enc.push(e, x[f * hop:(f + 1) * hop])
                c = enc.run([e])[e]
                dec.push(d, c)
                codes.append(c.numpy())
                audio.append(dec.run([d])[d].numpy())
        return np.concatenate(codes, 1), np.concatenate(audio)

    async def main() -> list[tuple[np.ndarray, np.ndarray]]:
        models = TritonModels(server.grpc_url, timeout_s=TIMEOUT)
        ids = [new_sequence_id() for _ in range(3)]
        codes: list[list[np.ndarray]] = [[], [], []]
        audio: list[list[np.ndarray]] = [[], [], []]

        async def one(i: int, f: int) -> None:
            first, last = f == joins[i], f == leaves[i] - 1
            c = await models.encode(ids[i], pcm[i][f * hop:(f + 1) * hop].numpy(), start=first, end=last)
            codes[i].append(c)
            audio[i].append(await models.decode(ids[i], c, start=first, end=last))

        for f in range(F):
            await asyncio.gather(*(one(i, f) for i in range(3) if joins[i] <= f < leaves[i]))
        await models.close()
        return [(np.concatenate(codes[i], 1), np.concatenate(audio[i])) for i in range(3)]

    got = run(main())
    for i in range(3):
        want_codes, want_audio = reference(pcm[i], range(joins[i], leaves[i]))
        assert np.array_equal(got[i][0], want_codes)
        assert np.abs(got[i][1] - want_audio).max() < 1e-5


# -- S2S step ----------------------------------------------------------------------------------------------
def reference_call(lm: LM, spec: CallSpec, frames: list[list[int]], styles: dict[int, tuple[str, str]]):
    """The call alone in an in-process engine: (agent codes or None, text token) per step."""
    engine = GenerationEngine(lm, 1, silence_codes=[0] * lm.n_q)
    call = engine.join(spec)
    out = []
    for t, values in enumerate(frames):
        engine.push(call, values, t)
        if t in styles:
            engine.set_style(call, *styles[t])
        o = engine.tick().outputs[0]
        out.append((o.agent_codes, o.text_token))
    return out


def test_s2s_on_triton_equals_in_process_and_calls_are_isolated(server: TritonServer, lm: LM) -> None:
    """Four calls (greedy and sampled) join at frames 0, 0, 3, 6 and two leave early; one changes
    its emotion mid-call. Each equals the same call alone in process, step for step."""
    T = 10
    g = torch.Generator().manual_seed(5)
    frames = [torch.randint(-1, lm.card, (T, lm.n_q), generator=g).tolist() for _ in range(4)]
    greedy = SamplingParams(temperature=0.0, top_k=0, text_temperature=0.0, text_top_k=0)
    specs = [CallSpec("a", 11, greedy, "female_1", "HAPPY", True), CallSpec("b", 12, SamplingParams(0.8, 50), "male_1"),
             CallSpec("c", 13, greedy, "male_2", "EMPATHY"), CallSpec("d", 14, SamplingParams(1.0, 20), "female_2")]
    joins, leaves = [0, 0, 3, 6], [T, 5, 9, T]
    styles = {1: {4: ("male_1", "SURPRISE")}}

    async def main():
        models = TritonModels(server.grpc_url, timeout_s=TIMEOUT)
        ids = [new_sequence_id() for _ in specs]
        outs: list[list] = [[] for _ in specs]

        async def one(i: int, f: int) -> None:
            s, t = specs[i], f - joins[i]
            kw = {}
            if t == 0:
                kw = dict(start=True, seed=s.seed, temperature=s.sampling.temperature, top_k=s.sampling.top_k,
                          voice=s.voice, emotion=s.emotion)
            if t in styles.get(i, {}):
                kw.update(voice=styles[i][t][0], emotion=styles[i][t][1])
            r = await models.s2s_step(ids[i], frames[i][t], end=f == leaves[i] - 1, **kw)
            outs[i].append((r.agent_codes if r.agent_codes[0] >= 0 else None, r.text_token))

        for f in range(T):
            await asyncio.gather(*(one(i, f) for i in range(4) if joins[i] <= f < leaves[i]))
        await models.close()
        return outs

    before = batch_stats(server.metrics(), "s2s_step")
    got = run(main())
    for i, s in enumerate(specs):
        n = leaves[i] - joins[i]
        assert got[i] == reference_call(lm, s, frames[i][:n], styles.get(i, {})), s.call_id
    after = batch_stats(server.metrics(), "s2s_step")
    steps = sum(leaves) - sum(joins)
    assert after["inferences"] - before["inferences"] == steps  # every step answered, by batches of >= 1
    assert 0 < after["executions"] - before["executions"] <= steps


def test_bad_input_gets_a_clear_error_and_harms_no_other_sequence(server: TritonServer, lm: LM) -> None:
    greedy = SamplingParams(temperature=0.0, top_k=0, text_temperature=0.0, text_top_k=0)
    spec = CallSpec("ok", 21, greedy, "female_1", "NEUTRAL")
    g = torch.Generator().manual_seed(9)
    frames = torch.randint(0, lm.card, (6, lm.n_q), generator=g).tolist()

    async def main():
        models = TritonModels(server.grpc_url, timeout_s=TIMEOUT)
        good = new_sequence_id()
        outs = []

        async def step(t: int):
            kw = dict(start=True, seed=spec.seed, temperature=0.0, top_k=0, voice="female_1",
                      emotion="NEUTRAL") if t == 0 else {}
            r = await models.s2s_step(good, frames[t], **kw)
            outs.append((r.agent_codes if r.agent_codes[0] >= 0 else None, r.text_token))

        async def refused(coro, exc, *words):
            with pytest.raises(exc) as info:
                await coro
            for w in words:
                assert w.lower() in str(info.value).lower(), str(info.value)

        await step(0)
        bad = new_sequence_id()
        start = dict(start=True, seed=1, temperature=0.0, top_k=0)
        # wrong dtype and shape: Triton's own checks, before the model
        wrong_dtype = models._input("USER_CODES", np.zeros(lm.n_q, np.float32), "FP32")
        await refused(models._infer("s2s", bad, [wrong_dtype], ["AGENT_CODES"], start=True, end=False),
                      TritonInputError, "data-type", "expects")
        await refused(models.s2s_step(bad, [0] * (lm.n_q - 1), **start), TritonInputError, "shape")
        await step(1)
        # out of range codes, unknown voice, a START without its seed: the model's checks
        await refused(models.s2s_step(bad, [lm.card] * lm.n_q, **start), TritonInputError, "values must be in")
        await refused(models.s2s_step(bad, [0] * lm.n_q, **start | {"voice": "robot"}), TritonInputError,
                      "unknown voice")
        await refused(models.s2s_step(bad, [0] * lm.n_q, start=True), TritonInputError, "needs SEED")
        # no START: an unknown sequence, then an ended one
        await refused(models.s2s_step(new_sequence_id(), [0] * lm.n_q), TritonUnavailableError, "START")
        ended = new_sequence_id()
        await models.s2s_step(ended, [0] * lm.n_q, **start)
        await models.end("s2s", ended)
        await refused(models.s2s_step(ended, [0] * lm.n_q), TritonUnavailableError, "START")
        await step(2)
        # the codec models: PCM that is not whole frames, codes out of range, NaN audio
        await refused(models.encode(new_sequence_id(), np.zeros(100, np.float32), start=True), TritonInputError,
                      "whole frames")
        await refused(models.encode(new_sequence_id(), np.full(640, np.nan, np.float32), start=True),
                      TritonInputError, "NaN")
        await refused(models.decode(new_sequence_id(), np.full((8, 1), 5000), start=True), TritonInputError,
                      "code values must be in")
        await refused(models.decode(new_sequence_id(), np.zeros((9, 1), np.int64), start=True), TritonInputError,
                      "codebooks")
        # a batch of good and bad requests at once: only the bad one fails
        results = await asyncio.gather(step(3), models.s2s_step(new_sequence_id(), [-7] * lm.n_q, **start),
                                       return_exceptions=True)
        assert results[0] is None and isinstance(results[1], TritonInputError)
        await step(4)
        await step(5)
        await models.end("s2s", good)
        # the refused STARTs hold no batch slot in Triton (the client ended them): all SLOTS slots start
        # at once, well within the 15 s a held slot would take to idle out
        quick = TritonModels(server.grpc_url, timeout_s=5.0)
        fresh = [new_sequence_id() for _ in range(SLOTS)]
        await asyncio.gather(*(quick.s2s_step(i, [0] * lm.n_q, **start) for i in fresh))
        await asyncio.gather(*(quick.end("s2s", i) for i in fresh))
        await quick.close()
        await models.close()
        return outs

    got = run(main())
    assert got == reference_call(lm, spec, frames, {})
    assert server.ready()  # no stub died


def test_codec_service_on_triton_equals_in_process(server: TritonServer, codec) -> None:
    """The codec gRPC service on the Triton backend: uneven PCM chunks encode to the same codes as
    the in-process service (the trailing partial frame zero-padded the same way), and decode to
    the same PCM16 (within 1 LSB)."""
    from maata.audio import float_to_pcm16
    from services.codec.service import CodecServiceConfig, serve_codec

    from maata_protos.v1 import codec_pb2
    from maata_protos.v1.codec_pb2_grpc import CodecStub

    g = torch.Generator().manual_seed(4)
    pcm = (0.1 * torch.randn(7 * codec.hop + 300, generator=g)).numpy()
    chunks = [pcm[i:i + 1000] for i in range(0, len(pcm), 1000)]
    rate = codec.cfg.sample_rate

    async def through(backend: ModelBackendConfig) -> tuple[list[list[int]], bytes]:
        svc = await serve_codec(CodecServiceConfig(server=ServerConfig(grace_seconds=2.0), model_backend=backend,
                                                   max_streams=SLOTS), port=0, host="127.0.0.1", codec=codec)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
                stub = CodecStub(ch)
                frames = []
                async for reply in stub.Encode(iter([codec_pb2.AudioChunk(pcm16=float_to_pcm16(c), sample_rate=rate,
                                                                           seq=i) for i, c in enumerate(chunks)])):
                    frames += [list(f.codes) for f in reply.frames]
                audio = b""
                messages = [codec_pb2.CodeFrames(frames=[CodeFrame(codes=f)], seq=t) for t, f in enumerate(frames)]
                async for reply in stub.Decode(iter(messages)):
                    audio += reply.pcm16
            return frames, audio
        finally:
            await svc.drain()

    local = run(through(ModelBackendConfig()))
    remote = run(through(ModelBackendConfig(kind="triton", triton_url=server.grpc_url, timeout_s=TIMEOUT)))
    assert len(local[0]) == 8 and remote[0] == local[0]
    a, b = (np.frombuffer(x, dtype=np.int16).astype(np.int32) for x in (local[1], remote[1]))
    assert len(a) == len(b) == 8 * codec.hop and np.abs(a - b).max() <= 1


def test_partner_call_resumes_across_a_triton_restart(server: TritonServer) -> None:
    """The whole stack (`maata serve`'s one process, codec and S2S on Triton): Triton is killed
    during a partner call and started again; the partner sees the call end UNAVAILABLE with
    ``resumable``, reconnects with the same call_id (``converse`` does) and the call finishes OK,
    resumed from the stored history."""
    from services.client import converse
    from services.serve import load_config, start

    env = {"MAATA_SERVE__GATEWAY__SERVER__PORT": "0", "MAATA_SERVE__CODEC__SERVER__PORT": "0",
           "MAATA_SERVE__GENERATION__SERVER__PORT": "0", "MAATA_SERVE__SESSION__SERVER__PORT": "0"}
    for svc in ("CODEC", "GENERATION"):
        env.update({f"MAATA_SERVE__{svc}__MODEL_BACKEND__KIND": "triton",
                    f"MAATA_SERVE__{svc}__MODEL_BACKEND__TRITON_URL": server.grpc_url,
                    f"MAATA_SERVE__{svc}__MODEL_BACKEND__TIMEOUT_S": "10",
                    f"MAATA_SERVE__{svc}__MODEL_BACKEND__READY_POLL_S": "0.2"})
    t = np.arange(16000 * 6) / 16000
    audio = (0.2 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)).astype(np.float32)
    events = []

    async def outage() -> None:
        await asyncio.sleep(2.0)
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)

    async def main():
        stack = await start(load_config(environ=env), "all")
        try:
            restart = asyncio.ensure_future(outage())
            result = await converse(f"127.0.0.1:{stack.ports['gateway']}", stack.dev_key, audio, 16000,
                                    call_id="through-triton", retries=60, on_event=events.append)
            await restart
            return result
        finally:
            await stack.drain()

    result = run(main())
    assert result.code == grpc.StatusCode.OK, result.details
    assert result.resumes >= 1
    ended = [e.ended for e in events if e.WhichOneof("event") == "ended"]
    assert any(e.resumable and e.code == "UNAVAILABLE" for e in ended), ended
    # the agent's frames up to the stored history and after the resume (user audio sent while the
    # call was down is not in it: the client sends only into a started call)
    started = [e.started for e in events if e.WhichOneof("event") == "started"]
    assert started[-1].resumed and max(result.frames) > started[-1].frames


# -- the generation service on Triton: kill, restart, resume ------------------------------------------------
def test_generation_service_on_triton_resumes_after_triton_restart(server: TritonServer, lm: LM) -> None:
    """A call runs through the generation service on the Triton backend; Triton is killed mid-call:
    the call ends UNAVAILABLE with the resume hint, health goes NOT_SERVING and new calls are
    refused; Triton restarts: health SERVING, the call resumes from the store with every stepped
    frame, and the whole call equals the same call uninterrupted in process."""
    S, extra = 7, 5
    g = torch.Generator().manual_seed(2)
    frames = torch.randint(-1, lm.card, (S + extra, lm.n_q), generator=g).tolist()
    store = MemorySessionStore()
    cfg = GenerationServiceConfig(server=ServerConfig(grace_seconds=2.0), manual_clock=True, max_calls=SLOTS,
                                  history_flush_frames=3, silence_codes=[0] * lm.n_q, idle_timeout_s=60.0,
                                  model_backend=ModelBackendConfig(kind="triton", triton_url=server.grpc_url,
                                                                   timeout_s=5.0, ready_poll_s=0.2))
    first = UserFrame(config=CallConfig(call_id="call-t", sampling=Sampling(temperature=0.9, top_k=40, seed=99),
                                        style=Style(voice="female_2", emotion="HAPPY"), text=True))

    async def health(port: int) -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
            return reply.status

    async def until(cond, timeout: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await cond():
            assert loop.time() < deadline, "condition not met"
            await asyncio.sleep(0.1)

    async def main():
        gen = await serve_generation(cfg, port=0, host="127.0.0.1", store=store, lm=lm)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gen.port}") as ch:
                stub = GenerationStub(ch)
                call = stub.Converse()
                await call.write(first)
                before = []
                for t in range(S):
                    await call.write(UserFrame(codes=CodeFrame(codes=frames[t]), seq=t))
                    await until(lambda: _queued(gen, "call-t"))
                    await gen.tick()
                    before.append(await asyncio.wait_for(call.read(), TIMEOUT))
                spec = gen.engine.get("call-t").spec
                await asyncio.to_thread(server.kill)
                await call.write(UserFrame(codes=CodeFrame(codes=frames[S]), seq=S))
                await until(lambda: _queued(gen, "call-t"))
                await gen.tick()  # the step's request fails: the call ends, resumable
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    while True:
                        await asyncio.wait_for(call.read(), TIMEOUT)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE and RESUME_HINT in info.value.details()
                stored = [f async for f in store.read("call-t")]
                assert len(stored) == S and (await store.get("call-t")).state == "live"  # no stepped frame lost
                await until(lambda: _async(health(gen.port) , lambda s: s == health_pb2.HealthCheckResponse.NOT_SERVING))
                refused = stub.Converse()
                await refused.write(first)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await asyncio.wait_for(refused.read(), TIMEOUT)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE

                await asyncio.to_thread(server.start)
                await until(lambda: _async(health(gen.port), lambda s: s == health_pb2.HealthCheckResponse.SERVING))
                call = stub.Converse()
                await call.write(first)
                after = []
                for t in range(S, S + extra):
                    await call.write(UserFrame(codes=CodeFrame(codes=frames[t]), seq=t))
                    await until(lambda: _queued(gen, "call-t"))
                    await gen.tick()
                    after.append(await asyncio.wait_for(call.read(), TIMEOUT))
                await call.done_writing()
                assert await asyncio.wait_for(call.code(), TIMEOUT) == grpc.StatusCode.OK
            await gen.calls.settle()
            return spec, before, after
        finally:
            await gen.drain()

    spec, before, after = run(main())
    assert after[0].resumed and after[0].frame == S and not any(r.resumed for r in after[1:])
    want = reference_call(lm, dataclasses.replace(spec), frames, {})
    got = [(list(r.codes.codes) if r.HasField("codes") else None, r.text_token) for r in before + after]
    assert got == want
    stored = run(_read(store, "call-t"))
    assert len(stored) == S + extra and [list(f.user.codes) for f in stored] == frames


def _queued(gen, call_id: str):
    async def check() -> bool:
        call = gen.engine.get(call_id)
        return call is not None and bool(call.queue)
    return check()


def _async(coro, pred):
    async def check() -> bool:
        return pred(await coro)
    return check()


async def _read(store, call_id: str):
    return [f async for f in store.read(call_id)]


def test_triton_cli_help() -> None:
    from maata.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["triton", "export", "--out", "x", "--codec", "c", "--lm", "l", "--slots", "8"])
    assert args.slots == 8 and args.func is not None
    args = parser.parse_args(["triton", "serve", "--repo", "x"])
    assert args.func is not None


def test_utf8_text_tensor() -> None:
    assert utf8("female_1").tobytes().decode() == "female_1"


def test_sequence_table_slots_restart_and_idle_reclaim() -> None:
    """The model instances' correlation id -> slot table (pure Python): START takes the lowest free
    slot, a repeated START restarts the sequence in its own slot, END frees it, and a sequence
    that Triton dropped for idleness (never seen again) gives its slot to a new one."""
    from services.triton.sequences import NoSlotFree, SequenceError, SequenceTable

    now = [0.0]
    free, closed = [1, 0], []
    table = SequenceTable(2, idle_s=15.0, open_slot=free.pop, close_slot=lambda s: (closed.append(s), free.append(s)),
                          clock=lambda: now[0])
    assert table.start(7).slot == 0 and table.start(8).slot == 1
    assert table.start(7).slot == 0 and closed == [0]  # restarted in place
    with pytest.raises(NoSlotFree):
        table.start(9)
    with pytest.raises(SequenceError, match="START"):
        table.get(9)
    with pytest.raises(SequenceError, match="non-zero"):
        table.start(0)
    now[0] = 10.0
    table.get(8)  # 8 is alive, 7 went quiet at t=0
    now[0] = 20.0
    assert table.start(9).slot == 0 and 7 not in table and table.reclaimed == 1
    table.release(8)
    table.release(8)  # ending twice is harmless
    assert 8 not in table and len(table) == 1
