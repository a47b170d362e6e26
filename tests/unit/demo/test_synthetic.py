"""The synthetic shapes world: grammar, ordering, determinism and storyline ground truth."""

import re

import numpy as np

from streamcap.demo import synthetic as syn

GRAMMAR = re.compile(
    r"^a (red|green|blue|yellow) (circle|square|triangle) (moves (left|right|up|down)|stays still)"
    r"( and a (red|green|blue|yellow) (circle|square|triangle) (moves (left|right|up|down)|stays still))?$")


def test_sampled_captions_follow_the_grammar_and_name_objects_left_first():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = syn.sample_scene(rng)
        cap = scene.caption()
        assert GRAMMAR.match(cap), cap
        xs = [o.centre(0.0)[0] for o in scene.ordered()]
        assert xs == sorted(xs)


def test_objects_stay_inside_the_canvas_and_apart_for_the_whole_duration():
    rng = np.random.default_rng(2)
    for _ in range(100):
        scene = syn.sample_scene(rng, n_objects=2, duration_s=6.0, speed_range=(0.06, 0.09))
        a, b = scene.objects
        for t in np.linspace(0, 6, 13):
            for o in scene.objects:
                x, y = o.centre(t)
                assert o.size / 2 <= x <= scene.aspect - o.size / 2
                assert o.size / 2 <= y <= 1 - o.size / 2
            assert np.hypot(*np.subtract(a.centre(t), b.centre(t))) >= (a.size + b.size) / 2
        assert scene.caption(0.0) == scene.caption(5.9)  # order never swaps within a scene


def test_motion_is_visible_between_first_and_last_frame():
    rng = np.random.default_rng(3)
    scene = syn.sample_scene(rng, n_objects=1)
    while scene.objects[0].motion != "right":
        scene = syn.sample_scene(rng, n_objects=1)
    labels = [syn.render_label_map(scene, t, 96, 96) for t in syn.clip_times(2.0, 6)]
    xs = [np.nonzero(lm)[1].mean() for lm in labels]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 5


def test_rendering_is_deterministic_per_seed():
    s1, s2 = syn.Storyline(seed=4), syn.Storyline(seed=4)
    assert np.array_equal(s1.render(7.3, 64, 48, 73), s2.render(7.3, 64, 48, 73))
    assert s1.caption_at(13.0) == s2.caption_at(13.0)
    assert not np.array_equal(s1.render(7.3, 64, 48, 73), syn.Storyline(seed=5).render(7.3, 64, 48, 73))


def test_consecutive_storyline_scenes_always_differ():
    story = syn.Storyline(seed=9, scene_s=6.0)
    caps = [story.scene(i).caption() for i in range(30)]
    assert all(a != b for a, b in zip(caps, caps[1:]))


def test_window_ground_truth_is_the_scene_holding_most_of_its_frames():
    story = syn.Storyline(seed=9, scene_s=6.0)
    # frames at 4.4, 4.8, ... 6.4: 4 of 6 before the cut at 6.0
    assert story.caption_for_window(4.4, 6.4) == story.scene(0).caption(4.4)
    # frames at 5.2 .. 7.2: 4 of 6 after the cut
    assert story.caption_for_window(5.2, 7.2) == story.scene(1).caption(0.0)


def test_label_map_matches_where_the_colour_is_drawn():
    scene = syn.sample_scene(np.random.default_rng(6), n_objects=1)
    img = syn.render_scene(scene, 0.3, 96, 96, noise_std=0)
    lm = syn.render_label_map(scene, 0.3, 96, 96)
    expected = np.array(syn.COLOURS[scene.objects[0].colour], float)
    assert np.abs(img[lm == 1].mean(0) - expected).max() < 30
