"""Test tooling shipped with the package (fuzzing mutators and case runners, headless-browser helpers): used by
``tests/`` and ``benchmarks/``, never imported by the runtime (a test checks it)."""
