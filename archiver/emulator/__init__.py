"""A Cloudflare-compatible emulator of the DevTools session endpoints, for the demo, tests and
benchmarks: a real loopback HTTP server, simulated sessions on a simulated clock, faults on
demand, and the ground truth of every session it ever had."""

from archiver.emulator.app import Emulator, ServerInfo, serve_forever
from archiver.emulator.clock import Clock
from archiver.emulator.faults import Faults
from archiver.emulator.world import CLOSE_REASONS, World

__all__ = ["CLOSE_REASONS", "Clock", "Emulator", "Faults", "ServerInfo", "World", "serve_forever"]
