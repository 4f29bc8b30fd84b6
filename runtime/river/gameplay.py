"""Game video for River: ViZDoom renders Freedoom at 1280x720 headless while a scripted player explores.

A random player sticks to walls and never opens a door, so the video would repeat one wall texture. The scripted
player walks forward, presses USE every few frames (doors, switches), turns in bursts, and turns away when it has
not moved for a while. Its choices come from a seeded generator, so a recording is reproducible.
ViZDoom's clock is 35 tics per second; a frame is captured every `tics_per_frame` tics, so the frame rate is
35 / tics_per_frame (`fps` is rounded to the nearest such rate and the real one is reported).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

TICRATE = 35
WADS = ("freedoom1", "freedoom2")
WIDTH, HEIGHT = 1280, 720


@dataclass(frozen=True)
class GameplayConfig:
    wad: str = "freedoom2"
    maps: tuple[str, ...] = ("MAP01",)
    segments_per_map: int = 4
    segment_s: float = 2.0
    fps: float = 17.5
    skill: int = 3  # Doom skill 1-5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.wad not in WADS:
            raise ValueError(f"wad must be one of {WADS}, got {self.wad!r}")
        if not self.maps:
            raise ValueError("maps must name at least one map")
        for m in self.maps:
            ok = (m.startswith("MAP") and m[3:].isdigit()) if self.wad == "freedoom2" else (
                len(m) == 4 and m[0] == "E" and m[2] == "M" and m[1].isdigit() and m[3].isdigit())
            if not ok:
                raise ValueError(f"map {m!r} is not a {self.wad} map name (freedoom2: MAP01..MAP32, "
                                 f"freedoom1: E1M1..E4M9)")
        if self.segments_per_map < 1 or self.segment_s <= 0 or not 1 <= self.skill <= 5:
            raise ValueError("segments_per_map must be >= 1, segment_s > 0 and skill in 1..5")
        if not 0 < self.fps <= TICRATE:
            raise ValueError(f"fps must be in (0, {TICRATE}], got {self.fps}")

    @property
    def tics_per_frame(self) -> int:
        return max(1, round(TICRATE / self.fps))

    @property
    def real_fps(self) -> float:
        return TICRATE / self.tics_per_frame

    @property
    def frames_per_segment(self) -> int:
        return max(1, round(self.segment_s * self.real_fps))


@dataclass(frozen=True)
class Segment:
    map: str
    index: int  # segment number within its map
    start_frame: int  # frame number within the map's recording
    frames: np.ndarray  # (T, 720, 1280, 3) uint8 RGB


def _game(cfg: GameplayConfig, map_name: str):
    import vizdoom as vzd

    g = vzd.DoomGame()
    g.set_doom_game_path(os.path.join(vzd.__path__[0], f"{cfg.wad}.wad"))
    g.set_doom_map(map_name)
    g.set_doom_config_path(os.path.join(tempfile.gettempdir(), "agentriver_vizdoom.ini"))  # not the working dir
    g.set_doom_skill(cfg.skill)
    g.set_screen_resolution(vzd.ScreenResolution.RES_1280X720)
    g.set_screen_format(vzd.ScreenFormat.RGB24)
    g.set_window_visible(False)
    g.set_render_hud(True)  # the status bar is the repetitive region River's reuse thrives on
    g.set_mode(vzd.Mode.PLAYER)
    g.set_available_buttons([vzd.Button.MOVE_FORWARD, vzd.Button.TURN_LEFT, vzd.Button.TURN_RIGHT, vzd.Button.USE,
                             vzd.Button.ATTACK])
    g.set_available_game_variables([vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y])
    g.set_episode_timeout(0)
    g.set_seed(cfg.seed)
    g.init()
    g.new_episode()
    return g


class ScriptedPlayer:
    """Forward, USE every 6 frames, random turn bursts, and a longer turn when stuck."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.turn_left = 0  # frames of turning left (<0: right) still to do
        self.trail: list[tuple[float, float]] = []
        self.frame = 0

    def act(self, x: float, y: float) -> list[int]:
        self.frame += 1
        self.trail = (self.trail + [(x, y)])[-8:]
        stuck = len(self.trail) == 8 and math.dist(self.trail[0], self.trail[-1]) < 16.0
        if self.turn_left == 0:
            if stuck:
                self.turn_left = int(self.rng.integers(6, 14)) * (1 if self.rng.random() < 0.5 else -1)
                self.trail.clear()
            elif self.rng.random() < 0.08:
                self.turn_left = int(self.rng.integers(2, 6)) * (1 if self.rng.random() < 0.5 else -1)
        left, right = self.turn_left > 0, self.turn_left < 0
        self.turn_left -= int(np.sign(self.turn_left))
        use = self.frame % 6 == 0
        attack = self.rng.random() < 0.05
        return [1, int(left), int(right), int(use), int(attack)]


def play(cfg: GameplayConfig) -> Iterator[Segment]:
    """Record `segments_per_map` consecutive segments on each map, in order. A death or a level exit restarts the
    map's episode and the recording goes on."""
    rng = np.random.default_rng(cfg.seed)
    per_segment = cfg.frames_per_segment
    for map_name in cfg.maps:
        game = _game(cfg, map_name)
        try:
            player = ScriptedPlayer(rng)
            frame_no = 0
            for index in range(cfg.segments_per_map):
                frames = np.empty((per_segment, HEIGHT, WIDTH, 3), np.uint8)
                for k in range(per_segment):
                    if game.is_episode_finished():
                        game.new_episode()
                    state = game.get_state()
                    frames[k] = state.screen_buffer
                    x, y = state.game_variables[:2]
                    game.make_action(player.act(float(x), float(y)), cfg.tics_per_frame)
                yield Segment(map_name, index, frame_no, frames)
                frame_no += per_segment
        finally:
            game.close()
