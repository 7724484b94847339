"""``python -m dolambda.emulator.moto``: run the emulator's patched moto server."""

from dolambda.emulator.moto.server import main

main()
