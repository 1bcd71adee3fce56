"""Leaderboard tooling: build, validate, verify and render submissions (docs/leaderboard.md).

A track is a shipped benchmark at a fixed version (configs/benchmark/<name>.yaml, with its
expected_stream). A submission is one JSON file in leaderboard/submissions/ (schema:
clbench/schemas/submission.json) carrying the resolved config, >= 3 seeds with their full accuracy
matrices, the claimed metrics, the environment and timing:

    build_submission(run dirs)  ->  validate (schema, track protocol, hashes, metrics recomputed from R)
                                ->  verify (re-run every seed, compare; --record: leaderboard/verifications/)
                                ->  render (LEADERBOARD.md, index.html; "✓ verified" only from records)
"""
from clbench.leaderboard.submission import (SUBMISSION_SCHEMA, build_submission, load_submission,
                                            save_submission, seed_free_config, seed_free_hash,
                                            submission_digest)
from clbench.leaderboard.validate import ValidationIssue, validate_file, validate_submission

__all__ = ["SUBMISSION_SCHEMA", "build_submission", "load_submission", "save_submission", "seed_free_config",
           "seed_free_hash", "submission_digest", "ValidationIssue", "validate_file", "validate_submission"]
