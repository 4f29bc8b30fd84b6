"""The online path on real frames: lookup + vote, the quality gate, fine-tune on a miss, reuse afterwards."""

import pytest

from runtime.river.online import GENERIC, GateConfig, LocalTrainer, OnlineRiver
from runtime.river.sr import EDSR, SRConfig
from runtime.river.store import ModelStore
from runtime.river.train import TrainConfig, TrainResult


def test_miss_finetune_then_reuse(pairs, tmp_path):
    sr = SRConfig()
    generic = TrainResult(EDSR(sr).state_dict(), sr, 0, 0.0, 0.0, 0)  # untrained: exactly bicubic, gain 0
    trainer = LocalTrainer()
    river = OnlineRiver(ModelStore(tmp_path), generic, trainer, gate=GateConfig(target_gain_db=0.2),
                        finetune=TrainConfig(steps=300, batch=16))
    seg = pairs[1]
    try:
        first = river.process(seg.segment_id, seg.lr, seg.hr)
        assert (first.voted_id, first.model_id, first.finetune_scheduled) == (-1, GENERIC, True)
        assert first.gain_db == pytest.approx(0.0, abs=1e-9)
        again = river.process(seg.segment_id, seg.lr, seg.hr)
        assert not again.finetune_scheduled  # the same content is already being trained
        assert river.collect(wait=True) == [1]
        info = river.store.info(1)
        assert info.source_segments == (seg.segment_id,) and info.psnr_gain_db > 0.2 and info.train_s > 0
        reuse = river.process(seg.segment_id, seg.lr, seg.hr)
        assert (reuse.voted_id, reuse.model_id, reuse.vote_share) == (1, 1, 1.0)
        assert reuse.gain_db == pytest.approx(info.psnr_gain_db) and not reuse.finetune_scheduled
        assert reuse.lookup_ms > 0 and reuse.gate_ms > 0
        for lr, hr, msg in ((seg.lr, seg.lr, "x2 ground truth of lr"), (seg.lr, seg.hr[:3], "x2 ground truth"),
                            (seg.lr[:0], seg.hr[:0], "lr is empty"), (seg.lr, seg.hr * 1.0, "hr must be uint8")):
            with pytest.raises(ValueError, match=msg):
                river.process("bad", lr, hr)
        assert len(river.store) == 1 and not river.pending  # nothing accepted changed
    finally:
        trainer.shutdown()
    with pytest.raises(ValueError, match="sample_frames"):
        GateConfig(sample_frames=0)
