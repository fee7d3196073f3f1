"""The Cortex-M section of docs/BENCHMARKS.md (host/skip2lora/bench/cortexm.py): its sentences
follow the figures (targets met or missed, the share of a step outside the kernels, the spread
of repeat runs, the flash write a real RP2040 would need), checked on figures made up here with
the expected numbers worked out by hand."""
from skip2lora.bench import cortexm


def _row(fit_s, epoch1_s, write_s, cached_s, us_per_mac, step_us=2000.0, kernels_us=1000.0,
         reads_us=400.0, repeats=None):
    r = {"n": 533, "calib_us": 3.0e6, "frozen_us": 1.5e6, "write_us": write_s * 1e6,
         "fit_us": fit_s * 1e6, "save_us": 0.9e6, "predict_us": 5000.0,
         "epochs": [[1, epoch1_s * 1e3, 0.9, 0.5]] + [[e, cached_s * 1e3, 1.0, 0.1]
                                                    for e in range(2, 21)],
         "step_us": step_us, "kernels_us": kernels_us, "reads_us": reads_us,
         "us_per_mac": us_per_mac}
    if repeats:
        r["repeats"] = repeats
    return r


def _figures(row, **extra):
    F = {"cortexm": {"kind": "cortex-m0plus", "mips": 125, "commit": "abc", "rows": {"thumb": row},
                     "slice_store_us": {"disk": 50000.0, "block": 60.0}}}
    F.update(extra)
    return F


def test_targets_read_met_and_missed_from_the_figures():
    text = "\n".join(cortexm.cortexm_lines(_figures(_row(9.5, 2.5, 1.0, 0.3, 0.05))))
    assert "| 20 epochs over 533 samples <= 10 s | 9.5 s | met |" in text
    assert "| the cache-building epoch <= 3 s | 2.5 s | met |" in text
    assert "| int8 dense kernel <= 12 instructions per multiply-add | 6.2 | met |" in text
    assert "would have to take" not in text
    text = "\n".join(cortexm.cortexm_lines(_figures(_row(30.0, 8.0, 5.0, 1.2, 0.1))))
    assert "| 20 epochs over 533 samples <= 10 s | 30.0 s | **missed**: 30.0 s against 10.0 s |" in text
    assert "| ... without the RAM disk's file write | 3.0 s | met |" in text
    assert "| int8 dense kernel <= 12 instructions per multiply-add | 12.5 | **missed**" in text
    # (10 - 3) / 19 = 0.368 s a cached epoch, 0.69 ms a sample; 1.2 s is 3.3x that
    assert "take 0.37 s each even with a 3.0 s first epoch (0.69 ms a sample); they take " \
           "1.20 s (3.3x that)" in text


def test_step_share_and_repeat_spread():
    reps = [{"calib_us": 100, "frozen_us": 50, "write_us": 1000, "fit_us": 200, "save_us": 10,
             "predict_us": 5, "step_us": 2.0},
            {"calib_us": 101, "frozen_us": 50, "write_us": 1500, "fit_us": 200, "save_us": 10,
             "predict_us": 5, "step_us": 2.0}]
    text = "\n".join(cortexm.cortexm_lines(_figures(_row(30.0, 8.0, 5.0, 1.2, 0.1,
                                                         repeats=reps))))
    # step 2.00 ms: kernels 1.00, reads 0.40, rest 0.60; outside the kernels 50 %
    assert "| `thumb` | 2.00 ms | 1.00 ms | 0.40 ms | 0.60 ms | 50.0 % |" in text
    assert "the computing stages agree within 1.00 %; the file write within 50.0 %" in text


def test_flash_write_from_the_datasheet_figures():
    # 533 records of 144 bytes = 76,752 bytes: 19 sectors of 4 KB, each erased (45 ms) and its
    # 16 pages of 256 bytes programmed (0.4 ms each): 19 * 51.4 ms
    assert abs(cortexm.flash_write_s(533) - 0.9766) < 1e-9
    text = "\n".join(cortexm.cortexm_lines(_figures(_row(30.0, 8.0, 5.0, 1.2, 0.1))))
    assert "a 32-byte store at the disk's start took 50,000 us, into a 4 KB view 60 us" in text
    assert "1.0 s for these records" in text


def test_m4f_ratio_from_a_bench_json():
    bench = {"primary_scenario": "noisy", "board": {"describe": "m4f"}, "source": {"commit": "x"},
             "scenarios": {"noisy": {
                 "n_finetune": 120,
                 "epoch_ms": {"skip2lora": {"all": [4000.0, 200.0, 200.0]},
                              "skip2lora-float": {"all": [9000.0, 2000.0, 2000.0]},
                              "lora-all": {"all": [10000.0, 10000.0, 10000.0]}},
                 "backend": {"skip2lora": "thumb", "skip2lora-float": "float",
                             "lora-all": "float"},
                 "trainable_params": {"skip2lora": 2596, "skip2lora-float": 2596,
                                      "lora-all": 3084},
                 "accuracy": {"skip2lora": 0.9, "skip2lora-float": 0.9, "lora-all": 0.9}}}}
    M = cortexm.m4f_summary(bench)
    text = "\n".join(cortexm.cortexm_lines(_figures(_row(30.0, 8.0, 5.0, 1.2, 0.1),
                                                    cortexm_m4f=M)))
    assert "a cached Skip2-LoRA epoch takes 0.200 of LoRA-All's (80.0 % less)" in text
    assert "Skip2-LoRA on `thumb` takes 0.0200 of LoRA-All's epoch" in text


def test_direct_disk_column_gets_its_own_target_lines():
    rows = {"thumb": _row(30.0, 8.0, 5.0, 1.2, 0.1),
            "thumb, direct disk": dict(_row(9.0, 2.0, 0.0, 0.3, 0.1), direct_disk=True)}
    F = _figures(rows["thumb"])
    F["cortexm"]["rows"] = rows
    text = "\n".join(cortexm.cortexm_lines(F))
    assert "| 20 epochs, RAM disk through a direct block device | 9.0 s | met |" in text
    assert "| the cache-building epoch, direct block device | 2.0 s | met |" in text
    assert "A column marked *direct disk*" in text
    # the first column still decides the plain targets
    assert "| 20 epochs over 533 samples <= 10 s | 30.0 s | **missed**" in text
