"""Test tooling shipped with the package (fuzzing mutators and case runners): used by ``tests/`` and ``benchmarks/``,
never imported by the runtime (a test checks it)."""
