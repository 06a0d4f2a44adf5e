"""Planted bugs: each is a plausible slip in one promise; the fast tests named beside it must go red.

    .venv/bin/python tests/planted_bugs.py [INDEX ...]

Each bug is planted alone, in a fresh copy of the working tree (in a temporary folder, put first on PYTHONPATH so
that subprocess tests import the copy too), and the named fast tests (`-m "not slow"`) run there. A bug that no
test catches is reported as SURVIVED and the script exits 1. Not collected by pytest (it runs pytest itself).
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent
PY = sys.executable
# (what the bug breaks, file, the correct text, the planted text, the fast tests that must fail)
BUGS = [
 # (id, file, old, new, tests)
 ("best epoch = latest", "tf_rnn/callbacks.py", "        return scores.index(best) + 1", "        return len(scores)", "tests/test_callbacks.py"),
 ("early stopping one epoch late", "tf_rnn/callbacks.py", "if self.patience and self.wait >= self.patience:", "if self.patience and self.wait > self.patience:", "tests/test_callbacks.py"),
 ("restart does not truncate history", "tf_rnn/callbacks.py", 'v[:self.first_epoch] for k, v in state["history"].items()}', 'v for k, v in state["history"].items()}', "tests/test_callbacks.py"),
 ("NaN epoch saved as best", "tf_rnn/callbacks.py", "            return  # Diverged: NaNGuard stops the run and reports it.", "            pass", "tests/test_callbacks.py tests/test_train.py -k nan"),
 ("cosine schedule not used", "tf_rnn/models.py", 'if config.lr_schedule == "cosine" and decay_steps:', 'if config.lr_schedule == "cosine" and decay_steps and False:', "tests/test_callbacks.py"),
 ("cosine over one epoch, not the run", "tf_rnn/train.py", "model = build_model(run.config, decay_steps=run.total_steps,", "model = build_model(run.config, decay_steps=run.steps_per_epoch,", "tests/test_train.py -k metrics_record"),
 ("throughput: a budget-cut execution ends an epoch", "tf_rnn/callbacks.py", "epoch_ends = steps // self.steps_per_epoch - self.steps // self.steps_per_epoch", "epoch_ends = int(batch == self.steps_per_epoch - 1)", "tests/test_callbacks.py -k throughput"),
 ("throughput counts warm-up", "tf_rnn/callbacks.py", "self.warmup = 3 if self.first_epoch else 1", "self.warmup = 1", "tests/test_callbacks.py -k throughput"),
 ("TF1 forget bias dropped", "tf_rnn/convert_tf1.py", "keras_bias = np.concatenate([bi, bf + forget_bias, bj, bo])", "keras_bias = np.concatenate([bi, bf + 1.0, bj, bo])", "tests/test_legacy_port.py -k many_steps"),
 ("legacy accuracy vs wrong labels", "legacy_port/mnist_lstm.py", "test_accuracy, _ = evaluate(sess, g, mnist.test.images, mnist.test.labels)", "test_accuracy, _ = evaluate(sess, g, mnist.test.images, mnist.train.labels[:mnist.test.num_examples])", "tests/test_legacy_port.py -k true_test_labels"),
 ("predict index restarts per batch", "tf_rnn/predict.py", 'where = f"{path}[{start + k}]"', 'where = f"{path}[{k}]"', "tests/test_export.py -k index"),
 ("serving accepts negative floats", "tf_rnn/export.py", "tf.reduce_all((inputs >= 0.0) & (inputs <= 1.0))", "tf.reduce_all((inputs >= -1.0) & (inputs <= 1.0))", "tests/test_export.py -k refuse"),
 ("predict accepts negative floats", "tf_rnn/predict.py", "if array.min() < 0 or array.max() > 1:", "if array.max() > 1:", "tests/test_export.py -k bad_inputs"),
 ("npz labels unchecked", "tf_rnn/mnist_files.py", "        _check_labels(y, Path(where))\n", "", "tests/test_data.py -k npz"),
 ("negative labels pass", "tf_rnn/mnist_files.py", "bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]", "bad = labels[labels >= NUM_CLASSES]", "tests/test_data.py -k npz"),
 ("run error exits 2", "tf_rnn/cli.py", "                fail(str(e), RUN)\n            except KeyboardInterrupt:", "                fail(str(e), USAGE)\n            except KeyboardInterrupt:", "tests/test_cli.py"),
 ("Ctrl-C exits 1", "tf_rnn/cli.py", "fail(on_interrupt, INTERRUPTED)", "fail(on_interrupt, RUN)", "tests/test_cli.py"),
 ("dropout not reseeded per epoch", "tf_rnn/train.py", "        EpochSeeds(config.seed),\n", "", "tests/test_train.py -k killed_mid_epoch"),
 ("fused ops in inference/export traces", "tf_rnn/layers.py", "if not (isinstance(training, bool) and training) or fused.in_xla_context():", "if fused.in_xla_context():", "tests/test_saving.py tests/test_fused.py -k 'infers or every_save_path'"),
 ("import tf_rnn registers nothing", "tf_rnn/__init__.py", "    register_keras_objects()\n", "    pass\n", "tests/test_saving.py -k import_tf_rnn"),
 ("pixel/permuted views keep the row recipe", "tf_rnn/datasets.py", "(VIEW_DEFAULTS.get(sequence, {}) if entry.image else {})", "{}", "tests/test_contracts.py -k view_gets"),
 ("CLIs import Keras before parsing flags", "tf_rnn/__init__.py", 'if not _main_module().startswith("tf_rnn."):', "if True:", "tests/test_quiet.py -k help_answers"),
 ("tf.data autotuner back (silent exits)", "tf_rnn/pipeline.py", "options.autotune.enabled = False", "options.autotune.enabled = True", "tests/test_quiet.py -k autotuner"),
 ("budgeted last epoch shows a full bar", "tf_rnn/callbacks.py", "steps = max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))", "steps = self.steps_per_epoch", "tests/test_quiet.py -k step_budgeted"),
 ("ETA counts the tracing update", "tf_rnn/callbacks.py", "return (now - then) / (current - seen) if current > seen else 0", "return (now - self._start) / current", "tests/test_quiet.py -k progress_estimate"),
 ("keras-tuner's 1-based trial display back", "tf_rnn/tune_chief.py", "oracle_class.verbose.fset(self, 0)", "oracle_class.verbose.fset(self, value)", "tests/test_tune.py -k ranked_trials"),
 ("trial 0's batch size unknown to HParams", "tf_rnn/tune.py", '    space.Choice("batch_size", BATCH_SIZES, default=base_batch_size)\n', "", "tests/test_tune.py -k ranked_trials"),
 ("HParams columns in name order", "tf_rnn/tune.py", "hparams_config([*searched, *fixed], spec, test=False)", "hparams_config(sorted([*searched, *fixed]), spec, test=False)", "tests/test_tune.py -k ranked_trials"),
 ("best_config.json does not name its trial", "tf_rnn/tune.py", '{config_lib.TRIAL_KEY: rows[0]["trial"], **best.to_dict()}', "best.to_dict()", "tests/test_tune.py -k ranked_trials"),
 ("softsign's cuDNN warning on a CPU", "tf_rnn/layers.py", 'if not _warned_softsign and tf.config.list_logical_devices("GPU"):', "if not _warned_softsign:", "tests/test_layers.py -k softsign"),
 ("1 epochs", "tf_rnn/cli.py", "{'' if n == 1 else 's'}", "s", "tests/test_quiet.py -k plurals"),
 ("export CLI cannot load a tf_rnn model", "tf_rnn/export.py", "    tf_rnn.register_keras_objects()  # The file", "    pass  # The file", "tests/test_saving.py -k reexports"),
 ("a type error names the flag twice", "tf_rnn/config.py", 'raise argparse.ArgumentTypeError(f"{text!r} is not {_KIND_NAMES[kind]}") from None', 'raise argparse.ArgumentTypeError(f"invalid value {text!r} for --{name}") from None', "tests/test_train.py -k bad_flags"),
 ("workdir not named first", "tf_rnn/train.py", '    print(f"run directory: {workdir}", flush=True)\n', "", "tests/test_quiet.py -k only_lines"),
 ("Fashion accepted as MNIST", "tf_rnn/mnist_files.py", "        _refuse_other_dataset(digest, path, spec, others)\n        want", "        want", "tests/test_data.py -k refused"),
 ("tune writes workdir before data", "tf_rnn/tune.py", "    check_workdir(tune, workdir, overwrite)\n", "    check_workdir(tune, workdir, overwrite)\n    workdir.mkdir(parents=True, exist_ok=True)\n", "tests/test_tune.py -k cannot_load"),
 ("config types unchecked", "tf_rnn/config.py", "            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):", "            if False:", "tests/test_cli.py -k type"),
 ("metrics record requested strategy", "tf_rnn/train.py", "strategy=strategy_name(run.strategy),", "strategy=config.strategy,", "tests/test_train.py -k metrics_record"),
 ("progress bar off a terminal", "tf_rnn/train.py", "verbose = 1 if sys.stdout.isatty() else 2", "verbose = 1", "tests/test_train.py -k terminal"),
 ("confusion matrix unlabelled", "tf_rnn/summaries.py", "    ax.set_xticklabels(class_names, rotation=45, ha=\"right\")\n", "", "tests/test_train.py -k confusion"),
 ("FIX numbers off", "legacy_port/mnist_lstm.py", "# FIX(8): the seed drew", "# FIX(7): the seed drew", "tests/test_legacy_port.py -k fix_markers"),
 ("NaN message blames model.keras", "tf_rnn/train.py", 'else "no epoch finished with a finite loss, so no model was saved")', 'else f"the best model so far is in {workdir / MODEL_FILE}")', "tests/test_train.py -k nan"),
 ("fused path under XLA", "tf_rnn/layers.py", "if not (isinstance(training, bool) and training) or fused.in_xla_context():", "if not (isinstance(training, bool) and training):", "tests/test_fused.py -k jit_compile"),
 ("builds race without a lock", "tf_rnn/fused.py", 'with FileLock(str(out) + ".lock", timeout=LOCK_TIMEOUT_S):', 'with FileLock(f"{out}.{os.getpid()}.lock", timeout=LOCK_TIMEOUT_S):', "tests/test_fused.py -k starting_together"),
 ("damaged cached kernel kept", "tf_rnn/fused.py", "                problem = load_error(out)\n", "                problem = None\n", "tests/test_fused.py -k truncated"),
 ("cache key ignores the compiler version", "tf_rnn/fused.py", "tf.__version__, cxx, version,", "tf.__version__, cxx,", "tests/test_fused.py -k cache_key"),
 ("LSTM gradient sums split by thread count", "tf_rnn/kernels/rnn_sequence.cc", "ForRowBlocks(ctx, Bt, kGradRows, [&](int64_t block, int64_t lo, int64_t hi) {\n      float* mem = work + block * per_block;\n      std::fill(mem, mem + per_block, 0.f);\n      float *sw = mem, *su = sw + F * G, *sb = su + U * G;\n", "ForRowBlocks(ctx, Bt, std::min<int64_t>(kGradRows, (Bt + ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads() - 1) / ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads()), [&](int64_t block, int64_t lo, int64_t hi) {\n      float* mem = work + block * per_block;\n      std::fill(mem, mem + per_block, 0.f);\n      float *sw = mem, *su = sw + F * G, *sb = su + U * G;\n", "tests/test_fused.py -k bitwise_equal_with"),
 ("GRU gradient sums split by thread count", "tf_rnn/kernels/rnn_sequence.cc", "ForRowBlocks(ctx, Bt, kGradRows, [&](int64_t block, int64_t lo, int64_t hi) {\n      float* mem = work + block * per_block;\n      std::fill(mem, mem + per_block, 0.f);\n      float *sw = mem, *su = sw + F * G, *sb_in", "ForRowBlocks(ctx, Bt, std::min<int64_t>(kGradRows, (Bt + ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads() - 1) / ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads()), [&](int64_t block, int64_t lo, int64_t hi) {\n      float* mem = work + block * per_block;\n      std::fill(mem, mem + per_block, 0.f);\n      float *sw = mem, *su = sw + F * G, *sb_in", "tests/test_fused.py -k bitwise_equal_with"),
 ("GRU reset gate applied before the recurrent product", "tf_rnn/kernels/rnn_sequence.cc", "dq[2 * U + j] = da_h * r;", "dq[2 * U + j] = da_h;", "tests/test_fused.py -k 'equals_keras and gru'"),
 ("last-step gradient entered at step 0", "tf_rnn/kernels/rnn_sequence.cc", "return t == T - 1 ? p + b * U : nullptr;", "return t == 0 ? p + b * U : nullptr;", "tests/test_fused.py -k 'equals_keras and False'"),
 ("adding: both markers may fall in the first half", "tf_rnn/datasets.py", "rng.integers(half, seq_len, n)", "rng.integers(0, half, n)", "tests/test_datasets.py -k adding_marks"),
 ("copy: delimiter one step early", "tf_rnn/datasets.py", "sequence[:, COPY_RECALL + gap - 1] = COPY_SYMBOLS + 1", "sequence[:, COPY_RECALL + gap - 2] = COPY_SYMBOLS + 1", "tests/test_datasets.py -k copy_sequence"),
 ("generated test set depends on the model's config", "tf_rnn/datasets.py", "np.random.default_rng([config.seed, seq_len, part])", "np.random.default_rng([config.seed, seq_len, part, config.units])", "tests/test_datasets.py -k depends_only"),
 ("regression head not mapped back to target units", "tf_rnn/layers.py", "return z * np.array(self.std, np.float32) + np.array(self.mean, np.float32)", "return z", "tests/test_datasets.py -k 'own_units or heads_pick'"),
 ("per-step head reads the first steps", "tf_rnn/layers.py", "return x[:, -self.steps:]", "return x[:, :self.steps]", "tests/test_datasets.py -k heads_pick"),
 ("permuted view is the plain pixel order", "tf_rnn/layers.py", "return ops.take(pixels, pixel_permutation(steps, self.seed), axis=1)", "return pixels", "tests/test_datasets.py -k permuted"),
 ("regression best model chosen by the highest val_loss", "tf_rnn/tasks.py", 'monitor = ("val_loss", "min")', 'monitor = ("val_loss", "max")', "tests/test_datasets.py -k adding_run"),
 ("exported sequences not checked for NaN", "tf_rnn/export.py", "ok = tf.reduce_all(tf.math.is_finite(inputs))", "ok = tf.constant(True)", "tests/test_datasets.py -k adding_run"),
 ("npz NaN inputs accepted", "tf_rnn/datasets.py", "    if not np.isfinite(x).all():", "    if False:", "tests/test_datasets.py -k bad_npz"),
 ("custom loop scores regression as accuracy", "tf_rnn/distribute.py", "metric = task.metric\n", 'metric = "accuracy"\n', "tests/test_datasets.py -k custom_loop"),
 ("tune ranks a regression's trials by the highest val_loss", "tf_rnn/tune.py", 'sign = -1 if objective.direction == "max" else 1', "sign = -1", "tests/test_datasets.py -k tune_searches"),
 ("tune: multi_worker strategy accepted", "tf_rnn/tune.py", '        if self.strategy == "multi_worker":', '        if False:', "tests/test_tune_distributed.py"),
 ("tune: worker waits for the chief without a bound", "tf_rnn/tune.py", "        wait_for_chief(role, tune.chief_timeout)  #", "        pass  #", "tests/test_tune_distributed.py"),
 ("tune: a worker may overwrite the search", "tf_rnn/tune.py", "        if overwrite:\n            raise cli.UsageError", "        if False:\n            raise cli.UsageError", "tests/test_tune_distributed.py"),
 ("chief's best so far: the trial just ended", "tf_rnn/tune_chief.py", "            best = self.get_best_trials(1)\n", "            best = [trial]\n", "tests/test_tune_distributed.py -k prints_each"),
 ("restarted chief: finished trials run again", "tf_rnn/tune_chief.py", "if oracle.trials[t].status not in OVER]", "]", "tests/test_tune_distributed.py"),
 ("restarted chief: a worker's interrupted trial runs twice", "tf_rnn/tune_chief.py", "                    self._retry_queue.remove(args[0].trial_id)\n", "                    pass\n", "tests/test_tune_distributed.py"),
 ("failed oracle call keeps the lock", "tf_rnn/tune_chief.py", "                return _Raised(e)\n", "                raise\n", "tests/test_tune_distributed.py -k failing_oracle_call"),
 ("reload skips the repair", "tf_rnn/tune_chief.py", "            super().reload()\n            repair_reloaded_oracle(self)\n", "            super().reload()\n", "tests/test_tune_distributed.py"),
 ("chief serves a plain oracle", "tf_rnn/tune.py", "        oracle = tune_chief.restart_safe(oracle_class)(objective,", "        oracle = oracle_class(objective,", "tests/test_tune_distributed.py -k restart_safe_oracle"),
 ("chief bind failure unreported", "tf_rnn/tune.py", "        tune_chief.check_address(role.address)\n", "        pass\n", "tests/test_tune_distributed.py -k cannot_bind"),
 ("kernel A/B renames only REGISTER_OP", "benchmarks/kernel_ab.py", """re.subn(r'"TfRnn(\\w+)"', rf'"TfRnn{tag}\\1"', source)""", """re.subn(r'OP\\("TfRnn(\\w+)"', rf'OP("TfRnn{tag}\\1"', source)""", "tests/test_benchmarks.py"),
 ("fma peak: best repeat, not the median", "benchmarks/fma_peak.py", "round(statistics.median(v), 1)", "round(max(v), 1)", "tests/test_benchmarks.py -k fma_peak"),
 ("compile failure named by its last error", "tf_rnn/fused.py", "    return errors[0].strip()", "    return errors[-1].strip()", "tests/test_fused.py -k first_error_line"),
 ("time-major h sliced as batch-major", "tf_rnn/fused.py", "(h[-1] if last_only else", "(h[:, -1] if last_only else", "tests/test_fused.py -k 'equals_keras and False'"),
 ("GRU's h_prev one row back, not one step", "tf_rnn/kernels/rnn_sequence.cc", "q, t ? hp + (row - Bt) * U : nullptr, hi - lo, U};", "q, t ? hp + (row - 1) * U : nullptr, hi - lo, U};", "tests/test_fused.py -k 'equals_keras and gru'"),
 ("LSTM forget-gate gradient without c_prev", "tf_rnn/kernels/rnn_sequence.cc", "dz[U + j] = First ? 0.f : dct * c_prev[j] * f * (1.f - f);", "dz[U + j] = First ? 0.f : dct * f * (1.f - f);", "tests/test_fused.py -k 'equals_keras and lstm'"),
 ("micro-kernel steps b by half a panel", "tf_rnn/kernels/rnn_sequence.cc", "++q, b += kPanel) {\n      const __m256 b0", "++q, b += kPanel / 2) {\n      const __m256 b0", "tests/test_fused.py -k '(equals_keras and lstm) or avx512_path'"),  # On an AVX-512 CPU the Keras comparisons run the AVX-512 block: the AVX2 one is compared there (forced) by the avx512_path tests.
 ("steps per execution not a divisor", "tf_rnn/train.py", "    return max(d for d in range(1, min(requested, steps_per_epoch) + 1) if steps_per_epoch % d == 0)", "    return requested", "tests/test_train.py -k execution"),
 ("stream not cut at the step budget", "tf_rnn/train.py", "train_ds = run.splits.train.take(remaining_steps(run.total_steps, run.resumed_from, run.steps_per_epoch))", "train_ds = run.splits.train", "tests/test_train.py -k steps_per_execution_changes"),
 ("throughput: every batch counted full", "tf_rnn/callbacks.py", "self.samples += (steps - self.steps) * self.global_batch - epoch_ends * short", "self.samples += (steps - self.steps) * self.global_batch", "tests/test_callbacks.py -k throughput"),
 ("NaN blamed on an execution's last step", "tf_rnn/callbacks.py", "self.bad_steps = (self.last_good + 1, now)", "self.bad_steps = (now, now)", "tests/test_train.py -k nan"),
 ("resume refused under another per-call", "tf_rnn/workdir.py", 'RESUMABLE_CHANGES = frozenset({"data_dir", "strategy", "steps_per_execution"})', 'RESUMABLE_CHANGES = frozenset({"data_dir", "strategy"})', "tests/test_train.py -k resumes_under"),
 # The six survivors of an outside mutation audit, and two bugs only one unrelated test used to catch.
 ("npz uint8 labels refused", "tf_rnn/datasets.py", "    if np.issubdtype(y.dtype, np.integer):", "    if np.issubdtype(y.dtype, np.signedinteger):", "tests/test_contracts.py -k npz"),
 ("resumed budget not in steps", "tf_rnn/train.py", "return max(0, total_steps - (resumed_from or 0) * steps_per_epoch)", "return max(0, total_steps - (resumed_from or 0))", "tests/test_contracts.py -k resumed_run"),
 ("FAILED trial retried after a chief restart", "tf_rnn/tune_chief.py", 'OVER = ("COMPLETED", "FAILED")', 'OVER = ("COMPLETED",)', "tests/test_contracts.py -k reloaded_oracle"),
 ("chief0 becomes a worker", "tf_rnn/tune.py", '"chief" if "chief" in tuner_id else "worker"', '"chief" if tuner_id == "chief" else "worker"', "tests/test_contracts.py -k chief"),
 ("config file's dataset loses its defaults", "tf_rnn/config.py", 'dataset = overrides.get("dataset", file_values.get("dataset", TrainConfig.dataset))', 'dataset = overrides.get("dataset", TrainConfig.dataset)', "tests/test_contracts.py -k config"),
 ("test_examples counts recalled steps", "tf_rnn/tasks.py", '"test_examples": int(len(targets))', '"test_examples": int(targets.size)', "tests/test_contracts.py -k records"),
 ("resumed stream replays epoch 0", "tf_rnn/pipeline.py", "Dataset.range(first_epoch, 2**62)", "Dataset.range(0, 2**62)", "tests/test_data.py -k stream_started"),
 ("worker's calls unbounded", "tf_rnn/tune.py", "        tuner.oracle.stub = _Bounded(tuner.oracle.stub, tune.chief_timeout)\n", "        pass\n", "tests/test_tune_distributed.py -k bounds_every_call"),
 ("any keras-tuner accepted", "tf_rnn/tune_chief.py", "    if not keras_tuner.__version__.startswith(KERAS_TUNER_SERIES):", "    if False:", "tests/test_tune_distributed.py -k keras_tuner_the_repairs"),
 ("serve_uint8 divides by 256", "tf_rnn/export.py", "tf.cast(images, tf.float32) / 255.0", "tf.cast(images, tf.float32) / 256.0", "tests/test_contracts.py -k saved_model_answers"),
 ("LiteRT LSTM unrolled, not fused", "tf_rnn/litert.py", "return fused_lstm(rnn, x) if fusable(rnn) else unrolled(rnn, x)", "return unrolled(rnn, x)", "tests/test_deploy.py -k every_cell"),
 ("LiteRT LSTM annotation lost (a WHILE)", "tf_rnn/litert.py", '"api_implements": f"lstm_{uuid.uuid4()}", ', "", "tests/test_deploy.py -k every_cell"),
 ("LiteRT file of Keras' own graph (Flex/WHILE)", "tf_rnn/litert.py", "        with layers_written_by(write_layer):", "        with layers_written_by(None):", "tests/test_deploy.py -k every_cell"),
 ("fused LSTM state leaks between requests", "tf_rnn/litert.py", "        self.interpreter.reset_all_variables()\n", "", "tests/test_contracts.py -k litert"),
 ("LiteRT runner passes any batch through", "tf_rnn/litert.py", "for s, v in zip(shape, value.shape)):", "for s, v in zip(shape[1:], value.shape[1:])):", "tests/test_deploy.py -k refuses"),
 ("step signature keeps LastSteps in the head", "tf_rnn/streaming.py", "return [layer for layer in after if not isinstance(layer, LastSteps)]", "return after", "tests/test_deploy.py -k per_step"),
 ("ONNX vanilla RNN left as a GRU", "tf_rnn/onnx_export.py", "        if isinstance(rnn, keras.layers.SimpleRNN):", "        if False:", "tests/test_deploy.py -k every_cell"),
 ("ONNX softsign written as tanh", "tf_rnn/onnx_export.py", 'act = "Softsign" if rnn.cell.activation is keras.activations.softsign else "Tanh"', 'act = "Tanh"', "tests/test_deploy.py -k every_cell"),
 ("Flex ops pass the built-ins check", "tf_rnn/litert.py", 'if op in FORBIDDEN_OPS or op.startswith("CUSTOM:")}', "if op in FORBIDDEN_OPS}", "tests/test_deploy.py -k op_check"),
 ("a WHILE passes the built-ins check", "tf_rnn/litert.py", 'FORBIDDEN_OPS = ("WHILE", ', "FORBIDDEN_OPS = (", "tests/test_deploy.py -k op_check"),
 ("predict keeps a padded batch's padding", "tf_rnn/predict.py", "chunks.append({k: v[:len(part)] for k, v in answer(padded).items()})", "chunks.append(answer(padded))", "tests/test_deploy.py -k every_format"),
 ('AVX-512 skips the 8-row block', 'tf_rnn/kernels/rnn_sequence.cc', 'if (r + 8 <= m) block(std::integral_constant<int, 8>(), r), r += 8;', 'if (r + 8 <= m) r += 8;', 'tests/test_fused.py -k avx512_path'),
 ('AVX-512 pairs a partial panel', 'tf_rnn/kernels/rnn_sequence.cc', 'if (left >= 2 * kPanel) {', 'if (left > kPanel) {', 'tests/test_fused.py -k avx512_path'),
 ('AVX-512 writes a narrow panel full', 'tf_rnn/kernels/rnn_sequence.cc', 'ldc, static_cast<int>(std::min<int64_t>(kPanel, left)), acc_in,\n                  init);', 'ldc, kPanel, acc_in, init);', 'tests/test_fused.py -k avx512_path'),
 ('AVX-512 never dispatched', 'tf_rnn/kernels/rnn_sequence.cc', 'if (isa == Isa::kAvx512)\n    GemmAvx512(', 'if (isa == Isa::kAvx512 && false)\n    GemmAvx512(', 'tests/test_fused.py -k avx512_path'),
 ('avx512 asked on a CPU without it passes', 'tf_rnn/fused.py', 'if asked == "avx512" and (flags is None or "avx512f" not in flags):', 'if False:', 'tests/test_fused.py -k bad_isa'),
 ('whole-epoch data never told its epoch', 'tf_rnn/train.py', 'callbacks.insert(0, DataEpoch(run.splits.train_epoch))', 'pass', 'tests/test_train.py -k whole_epochs'),
 ('whole-epoch data under a mid-epoch budget', 'tf_rnn/train.py', 'by_epoch = not custom_loop and replicas == 1 and total_steps % steps_per_epoch == 0', 'by_epoch = not custom_loop and replicas == 1', 'tests/test_train.py -k steps_per_execution_changes'),
 ('whole-epoch data reads its epoch once', 'tf_rnn/pipeline.py', 'flat_map(lambda _: one_epoch(epoch.read_value()))', 'flat_map(lambda _, e=int(epoch.numpy()): one_epoch(e))', 'tests/test_data.py -k epoch_by_epoch'),
 ('whole-epoch data casts in parallel (E log line)', 'tf_rnn/pipeline.py', 'return _untuned(ds.map(_to_float).prefetch(PARALLEL_BATCHES)), epoch', 'return _ready(ds), epoch', 'tests/test_quiet.py -k whole_epochs'),
 ('test set evaluated eagerly', 'tf_rnn/tasks.py', 'outputs.append(np.asarray(forward(x)))', 'outputs.append(np.asarray(model(x, training=False)))', 'tests/test_tasks.py -k traced_once'),
 ("chief drops update_trial's step", "tf_rnn/tune_chief.py", 'return self._call("update_trial", trial_id, metrics, step=step)', 'return self._call("update_trial", trial_id, metrics)', "tests/test_tune_distributed.py -k prints_each"),
 ("--augment auto mirrors every image dataset", "tf_rnn/datasets.py", 'return (self.augment if augment == "auto" else augment) == "hflip"', 'return augment == "hflip" or (augment == "auto" and self.image)', "tests/test_datasets.py -k auto_mirrors"),
 ("best_config.json's _trial refused by --config", "tf_rnn/config.py", "    values.pop(TRIAL_KEY, None)\n", "", "tests/test_contracts.py -k trial_annotation"),
 ("a workdir's missing parents not created", "tf_rnn/workdir.py", "    workdir.mkdir(parents=True, exist_ok=True)\n", "    workdir.mkdir(exist_ok=True)\n", "tests/test_tasks.py -k new_workdir"),
 ("README keeps a stale train time after a re-run", "README.md", "| **0.9026** | 478 s |", "| **0.9026** | 613 s |", "tests/test_results.py -k results_table"),
 ("README keeps a stale ratio to PyTorch", "README.md", "| LSTM(128) | **1.26×** |", "| LSTM(128) | **1.43×** |", "tests/test_results.py -k performance_table"),
 ("README's adding medians not the file's", "README.md", "after a median of 600 steps (600–904)", "after a median of 604 steps (600–904)", "tests/test_results.py -k adding_sentence"),
 ("README's latency not the file's", "README.md", "| ONNX Runtime 1.31 | 0.36 / 0.46 ms |", "| ONNX Runtime 1.31 | 0.36 / 0.64 ms |", "tests/test_results.py -k deployment_table"),
 ("a result file nobody describes", "benchmarks/README.md", "| `legacy_port_fashion_mnist.json` |", "| the TF1 port's run |", "tests/test_results.py -k how_it_was_written"),
 ("README names another CPU than the file's", "README.md", "| AMD EPYC, AVX2 | `train_throughput.json` |", "| Intel Xeon, AVX-512 | `train_throughput.json` |", "tests/test_results.py -k performance_table"),
 ("| head: a closed pipe is an unexpected error", "tf_rnn/cli.py", "if isinstance(e, BrokenPipeError) and _stdout_reader_gone():", "if False:", "tests/test_cli.py -k closed_pipe"),
 ("every broken pipe taken for | head", "tf_rnn/cli.py", "if isinstance(e, BrokenPipeError) and _stdout_reader_gone():", "if isinstance(e, BrokenPipeError):", "tests/test_cli.py -k closed_pipe"),
 ("| head: Python's exit flush prints Exception ignored", "tf_rnn/cli.py", "                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())\n", "", "tests/test_cli.py -k closed_pipe"),
 ("| head -0: the exit flush prints Exception ignored", "tf_rnn/cli.py", "                sys.stdout.flush()  # Here, not at exit: a reader gone by now is the closed pipe handled below.\n", "", "tests/test_cli.py -k closed_pipe"),
 ("hyperband's short search unexplained", "tf_rnn/tune.py", 'if tune.tuner == "hyperband" and ran < tune.max_trials else ""', 'if False else ""', "tests/test_tune.py -k fewer_trials"),
 ("chief's end line names no tuner", "tf_rnn/tune_chief.py", 'how = f" on {started[0]} in', 'how = f" in', "tests/test_tune.py tests/test_tune_distributed.py -k 'prints_each or ranked'"),
 ("finished workdir refused only after the data loads", "tf_rnn/train.py", "    if chief:  # A finished or foreign workdir is refused before the data loads (or downloads), not after.\n        workdir_lib.check(config, workdir)\n", "", "tests/test_train.py -k refused_before_the_data"),
 ("an .npz's unnamed classes all called None", "tf_rnn/datasets.py", "tuple(str(c) for c in range(count))", "tuple(str(None) for c in range(count))", "tests/test_datasets.py -k named_by_its_path"),
 ("a newer run's extra config field ignored on resume", "tf_rnn/config.py", "sorted(set(old) | set(new))", "sorted(set(old) & set(new))", "tests/test_contracts.py -k before_a_field"),
 ("the preset not recorded in the config", "tf_rnn/config.py", "values.update(PRESETS[preset], preset=preset)", "values.update(PRESETS[preset])", "tests/test_contracts.py -k preset_is_recorded"),
 ("a download with no timeout (a dead network hangs)", "tf_rnn/mnist_files.py", "    socket.setdefaulttimeout(20)  # urllib", "    pass  # urllib", "tests/test_data.py -k download_is_checked"),
 ("downloaded arrays unchecked", "tf_rnn/mnist_files.py", 'return validate_arrays(Arrays(x_train, y_train, x_test, y_test, source="download"), "download")', 'return Arrays(x_train, y_train, x_test, y_test, source="download")', "tests/test_data.py -k download_is_checked"),
 ("28x27 uint8 images accepted when injected", "tf_rnn/mnist_files.py", "if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:", "if x.dtype != np.uint8 or x.ndim != 3:", "tests/test_data.py -k word_for_word"),
 ("the Keras cache looked for in the wrong folder", "tf_rnn/mnist_files.py", 'Path.home() / ".keras"', 'Path.home() / "keras"', "tests/test_data.py -k keras_own"),
 ("MNIST's .npz unpickled", "tf_rnn/mnist_files.py", "np.load(io.BytesIO(raw), allow_pickle=False)", "np.load(io.BytesIO(raw), allow_pickle=True)", "tests/test_data.py -k pickled"),
 ("a user's .npz unpickled", "tf_rnn/datasets.py", "np.load(path, allow_pickle=False)", "np.load(path, allow_pickle=True)", "tests/test_data.py -k pickled"),
 ("step profile counts the executor's enclosing events as ops", "benchmarks/step_profile.py", 'if ":" in name and not name.startswith(NOT_OPS):', 'if ":" in name:', "tests/test_benchmarks.py -k step_profile"),
 ("bfloat16 peak measured in float32", "benchmarks/train_throughput.py", 'rate = matmul_peak_gflops("bfloat16" if name == "peak_bfloat16" else "float32")', 'rate = matmul_peak_gflops("float32")', "tests/test_benchmarks.py -k dtype_they_are_reported"),
 ("TensorFlow's import-time log lines not filtered", "tf_rnn/__init__.py", "\nquiet.install()\n", "\npass\n", "tests/test_quiet.py -k installs_the_filter"),
 ("absl's banner kept", "tf_rnn/quiet.py", 'if line.rstrip("\\n") == BANNER or (match and LEVELS.index(match.group(1)) < min_level):', "if match and LEVELS.index(match.group(1)) < min_level:", "tests/test_quiet.py -k held_to_its_log_level"),
 ("import-time errors dropped at level 2", "tf_rnn/quiet.py", "LEVELS.index(match.group(1)) < min_level", "LEVELS.index(match.group(1)) <= min_level", "tests/test_quiet.py -k held_to_its_log_level"),
 ("TensorFlow left with the filter's loader", "tf_rnn/quiet.py", "        module.__loader__ = module.__spec__.loader = self.inner  # The imported module keeps no trace of this.\n", "", "tests/test_quiet.py -k held_to_its_log_level"),
 ("AVX2 row arithmetic drops a row's last lane", "tf_rnn/kernels/rnn_sequence.cc", "_mm256_cmpgt_epi32(_mm256_set1_epi32(n), ", "_mm256_cmpgt_epi32(_mm256_set1_epi32(n - 1), ", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("emulated AVX-512 row arithmetic loads one lane short", "tf_rnn/kernels/rnn_sequence.cc", "  static inline V Load(const float* p, int n) { return LoadFirst(p, n); }", "  static inline V Load(const float* p, int n) { return LoadFirst(p, n > 1 ? n - 1 : n); }", "tests/test_fused.py -k avx512_path"),
 ("tanh not clamped below", "tf_rnn/kernels/rnn_sequence.cc", "L::Set(-8.01773357391357422f)", "L::Set(-1.f)", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("LSTM cell ignores the forget gate", "tf_rnn/kernels/rnn_sequence.cc", "if (c_prev) cj = L::Fma(f, L::Load(c_prev + j, n), cj);", "if (c_prev) cj = L::Add(L::Load(c_prev + j, n), cj);", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("GRU h without the update gate's carry", "tf_rnn/kernels/rnn_sequence.cc", "if (h_prev) hj = L::Fma(z, L::Load(h_prev + j, n), hj);", "if (h_prev) hj = L::Add(L::Load(h_prev + j, n), hj);", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("LSTM backward rows: the first step as a later one", "tf_rnn/kernels/rnn_sequence.cc", "    else if (out)\n      LstmRowBackward<true, true>(", "    else if (out)\n      LstmRowBackward<true, false>(", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("GRU backward rows: outside gradient dropped", "tf_rnn/kernels/rnn_sequence.cc", "    if (out && s.t)\n      GruRowBackward<true, false>(", "    if (out && s.t)\n      GruRowBackward<false, false>(", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("training A/B ignores the library it is given", "benchmarks/train_throughput.py", "            if library:  # Loaded", "            if library and False:  # Loaded", "tests/test_benchmarks.py -k training_ab"),
 ("gathered steps: the last group is never summed", "tf_rnn/kernels/rnn_sequence.cc", "if (++slot < kGradSteps && t > 0) return;", "if (++slot < kGradSteps) return;", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("gathered steps: dU takes step 0, which has no h_prev", "tf_rnn/kernels/rnn_sequence.cc", "if (const int64_t h_slots = t ? slot : slot - 1)", "if (const int64_t h_slots = slot)", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("GRU gathered steps: dq packed over the previous step's", "tf_rnn/kernels/rnn_sequence.cc", "dz_pack + steps.Offset(), dq_pack + steps.Offset(), steps.pack_stride};", "dz_pack + steps.Offset(), dq_pack, steps.pack_stride};", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("AVX2 sums start from z, not the bias", "tf_rnn/kernels/rnn_sequence.cc", "acc[r][h] = row_init ? _mm256_loadu_ps(row_init + 8 * h)", "acc[r][h] = false ? _mm256_loadu_ps(row_init + 8 * h)", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("AVX2 bias not moved on with the panel", "tf_rnn/kernels/rnn_sequence.cc", "    const float* init = row_init ? row_init + s * kPanel : nullptr;\n    if (cols == kPanel)", "    const float* init = row_init;\n    if (cols == kPanel)", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("AVX-512 pair's second panel takes the first's bias", "tf_rnn/kernels/rnn_sequence.cc", "const float* from = row_init ? row_init + kPanel * h :", "const float* from = row_init ? row_init :", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("narrow last panel: every column the bias' first", "tf_rnn/kernels/rnn_sequence.cc", "acc[r][j] = row_init ? row_init[j] :", "acc[r][j] = row_init ? row_init[0] :", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("GRU first step: q without the recurrent bias", "tf_rnn/kernels/rnn_sequence.cc", "          for (int64_t b = lo; b < hi; ++b) std::copy(b_rec, b_rec + G, q + (b - lo) * G);", "          for (int64_t b = lo; b < hi; ++b) std::fill(q + (b - lo) * G, q + (b - lo + 1) * G, 0.f);", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("transpose: a column's halves swapped", "tf_rnn/kernels/rnn_sequence.cc", "_mm256_permute2f128_ps(r[i], r[i + 4], 0x31)", "_mm256_permute2f128_ps(r[i], r[i + 4], 0x13)", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("transpose: the last columns' eighth row dropped", "tf_rnn/kernels/rnn_sequence.cc", "for (int64_t i = b; i < b + 8; ++i) scratch", "for (int64_t i = b; i < b + 7; ++i) scratch", "tests/test_fused.py -k 'equals_keras or avx512_path'"),
 ("bf16: operands truncated, not rounded", "tf_rnn/kernels/rnn_sequence.cc", "_mm256_storeu_si256((__m256i*)(out + j), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + j)));", "_mm256_storeu_si256((__m256i*)(out + j), _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(x + j)), 16)));", "tests/test_bfloat16.py -k 'bfloat16_products'"),
 ("bf16: packed dz pairs in the wrong order", "tf_rnn/kernels/rnn_sequence.cc", "_mm512_cvtne2ps_pbh(b, a)", "_mm512_cvtne2ps_pbh(a, b)", "tests/test_bfloat16.py -k 'bfloat16_products'"),
 ("bf16: stale rows past the gathered steps", "tf_rnn/kernels/rnn_sequence.cc", "          ZeroRowsFrom(pack, pack_stride, G, k);\n", "", "tests/test_bfloat16.py -k 'bfloat16_products'"),
 ("bf16: whole tiles start from zero, not the bias", "tf_rnn/kernels/rnn_sequence.cc", "      } else if (bias16) {", "      } else if (false) {", "tests/test_bfloat16.py -k 'bfloat16_products'"),
 ("bf16: gradient sums split by thread count", "tf_rnn/kernels/rnn_sequence.cc", "ForRowBlocks(ctx, Bt, kGradRows, [&](int64_t block, int64_t lo, int64_t hi) {\n      float* mem = work + block * per_block;\n      std::fill(mem, mem + per_block, 0.f);\n      float *sw = mem, *su = sw + F * G, *sb = su + U * G, *dh_next", "ForRowBlocks(ctx, Bt, std::min<int64_t>(kGradRows, (Bt + ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads() - 1) / ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads()), [&](int64_t block, int64_t lo, int64_t hi) {\n      float* mem = work + block * per_block;\n      std::fill(mem, mem + per_block, 0.f);\n      float *sw = mem, *su = sw + F * G, *sb = su + U * G, *dh_next", "tests/test_bfloat16.py -k bitwise_equal_with"),
 ("bf16: the layer trains float32's products", "tf_rnn/layers.py", "return functools.partial(fused.lstm, precision=self.precision)", "return fused.lstm", "tests/test_bfloat16.py -k 'training_runs or its_precision'"),
 ("bf16: the GRU accepted with --precision bfloat16", "tf_rnn/config.py", "if self.precision == \"bfloat16\" and (self.cell, self.activation) != (\"lstm\", \"tanh\"):", "if self.precision == \"bfloat16\" and (self.cell, self.activation) != (self.cell, \"tanh\"):", "tests/test_bfloat16.py -k refused"),
 ("bf16: a CPU without AMX not refused before training", "tf_rnn/fused.py", "if getattr(config, \"precision\", \"float32\") == \"bfloat16\":", "if False:", "tests/test_bfloat16.py -k refused"),
 ("bf16: the SavedModel serves the bfloat16 head", "tf_rnn/export.py", "    model = float32_model(model)\n\n    def heads", "    def heads", "tests/test_bfloat16.py -k 'training_runs or float32_copy'"),
 ("bf16: ONNX written from the bfloat16 head", "tf_rnn/export.py", "    model = float32_model(model)  # ONNX", "    model = model  # ONNX", "tests/test_bfloat16.py -k float32_copy"),
 ("bf16: LiteRT written from the bfloat16 head", "tf_rnn/export.py", "    model = float32_model(model)  # LiteRT", "    model = model  # LiteRT", "tests/test_bfloat16.py -k float32_copy"),
 ("bf16: outputs left in bfloat16", "tf_rnn/models.py", "outputs = keras.layers.Activation(\"linear\", dtype=\"float32\", name=\"float32_outputs\")(outputs)", "outputs = keras.layers.Activation(\"linear\", name=\"float32_outputs\")(outputs)", "tests/test_bfloat16.py -k 'training_runs or any_cpu'"),
 ("bf16: the policy left global after building", "tf_rnn/models.py", "    finally:\n        keras.config.set_dtype_policy(policy)\n", "    finally:\n        pass\n", "tests/test_bfloat16.py -k 'training_runs or any_cpu'"),
 ("result files: family without its model", "benchmarks/machine.py", 'for k in ("cpu family", "model") if k in ids', 'for k in ("cpu family",) if k in ids', "tests/test_benchmarks.py -k machine_names"),
 ("result files: a non-vector flag recorded", "benchmarks/machine.py", '"flags": [f for f in VECTOR_FLAGS if f in flags]', '"flags": sorted(flags)', "tests/test_benchmarks.py -k machine_names"),
 ("worker: a call the chief's death cut is not sent again", "tf_rnn/tune.py", "code != grpc.StatusCode.UNAVAILABLE or self._clock() + 1.0 >= deadline", "True", "tests/test_tune_distributed.py -k 'sent_again or bound'"),
 ("worker: any failed call is sent again", "tf_rnn/tune.py", "code != grpc.StatusCode.UNAVAILABLE or self._clock() + 1.0 >= deadline", "self._clock() + 1.0 >= deadline", "tests/test_tune_distributed.py -k 'sent_again or bound'"),
 ("worker: a call sent again without end", "tf_rnn/tune.py", "code != grpc.StatusCode.UNAVAILABLE or self._clock() + 1.0 >= deadline", "code != grpc.StatusCode.UNAVAILABLE", "tests/test_tune_distributed.py -k 'sent_again or bound'"),
 ("worker: each retry gets the whole bound", "tf_rnn/tune.py", '"timeout": max(deadline - self._clock(), 0.0)', '"timeout": self._timeout', "tests/test_tune_distributed.py -k 'sent_again or bound'"),
 ("chief: an EndTrial sent again counted twice", "tf_rnn/tune_chief.py", 'if name == "end_trial" and args[0].trial_id in self.end_order:', 'if False:', "tests/test_tune_distributed.py -k 'sent_again or bound'"),
 ("tune: TF's retracing warning from the fifth trial on", "tf_rnn/tune.py", "        with trials_traced_quietly():\n", "        if True:\n", "tests/test_tune.py -k retracing"),
 ("tune: every TF warning dropped in a search", "tf_rnn/tune.py", 'return "triggered tf.function retracing" not in record.getMessage()', "return False", "tests/test_tune.py -k retracing"),
]

def main(only: list[str]) -> int:
    survived = 0
    scratch = Path(tempfile.mkdtemp(prefix="planted-"))
    for i, (name, file, old, new, tests) in enumerate(BUGS):
        if only and str(i) not in only:
            continue
        tree = scratch / f"tree{i}"
        shutil.copytree(SRC, tree, ignore=shutil.ignore_patterns(".venv", ".cache", ".git", "runs", "__pycache__"))
        path = tree / file
        text = path.read_text()
        assert text.count(old) == 1, f"bug {i} ({name}): the correct text is not in {file} exactly once"
        path.write_text(text.replace(old, new))
        # The kernel cache is keyed by its source, which no bug here touches: share the checkout's build.
        env = {**os.environ, "PYTHONPATH": str(tree),
               "TF_RNN_CACHE": os.environ.get("TF_RNN_CACHE", str(SRC / ".cache" / "tf_rnn"))}
        cmd = f"{PY} -m pytest -q -x -n 0 -m 'not slow' -p no:cacheprovider {tests}"  # -n 0: a crash is pytest's own
        out = subprocess.run(cmd, shell=True, cwd=tree, env=env, capture_output=True, text=True)
        # A test whose fixture fails (ERROR) is caught too: the bug broke what the test needs.
        failed = [line.split(" - ")[0].removeprefix("FAILED ").removeprefix("ERROR ")
                  for line in out.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        # A kernel bug may corrupt memory and crash pytest itself (a signal): the suite went red all the same.
        crashed = out.returncode < 0 or out.returncode > 128
        if crashed:
            failed = [f"crashed (exit {out.returncode}) in " + next(
                (line.strip() for line in out.stderr.splitlines() if "tests/test_" in line), "?")]
        caught = (out.returncode == 1 and bool(failed)) or crashed
        survived += not caught
        print(f"{i:2d} {'caught  ' if caught else 'SURVIVED'} {name:40s} {failed[0] if failed else out.stdout[-200:]}",
              flush=True)
        shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
