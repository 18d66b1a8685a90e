"""The rehearsal: every real Qwen command run on CPU against random-weight hub stand-ins."""
