import numpy as np

from napari_med3dvlm.widgets import ChatWidget


def ask(dock, qtbot, question=None):
    with qtbot.waitSignal(dock.runner.done, timeout=60_000):
        if question is None:
            assert dock.send()
        else:
            dock.input.setText(question)
            qtbot.keyClick(dock.input, "\r")  # Enter sends


def test_two_turns_are_kept_per_layer(viewer_with_sample, qtbot):
    viewer, layer = viewer_with_sample
    dock = ChatWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Chat")
    ask(dock, qtbot, "Which organ is largest?")
    ask(dock, qtbot, "Is there a cyst?")
    conversation = dock.conversation(layer)
    assert [t.question for t in conversation.turns] == ["Which organ is largest?", "Is there a cyst?"]
    assert dock.input.text() == ""
    transcript = dock.transcript()
    assert transcript.index("Which organ is largest?") < transcript.index("Is there a cyst?")
    assert all(turn.answer in transcript for turn in conversation.turns)

    other = viewer.add_image(np.zeros((8, 16, 16), dtype=np.int16), name="other", metadata={"modality": "CT"})
    dock.layer_picker.set_layer(other)
    assert dock.transcript() == "" and dock.conversation(other).turns == []
    dock.layer_picker.set_layer(layer)
    assert "Is there a cyst?" in dock.transcript()

    dock.clear_button.click()
    assert dock.conversation(layer).turns == [] and dock.transcript() == ""


def test_multiple_choice_questions_send_the_choices(viewer_with_sample, qtbot):
    viewer, layer = viewer_with_sample
    dock = ChatWidget(viewer)
    dock.closed_mode.setChecked(True)
    dock.input.setText("Which organ has a mass?")
    assert not dock.send()  # choices still empty
    for edit, text in zip(dock.choice_inputs, ["liver", "spleen", "kidney", "pancreas"]):
        edit.setText(text)
    ask(dock, qtbot)
    turn = dock.conversation(layer).turns[-1]
    assert turn.choices == ("liver", "spleen", "kidney", "pancreas")
    assert "A. liver" in dock.transcript()


def test_a_failed_question_is_given_back(viewer_with_sample, engine, qtbot, tmp_path):
    viewer, layer = viewer_with_sample
    engine.update_settings(engine.settings.updated(model_source=str(tmp_path / "missing-model")))
    dock = ChatWidget(viewer)
    dock.input.setText("Is the liver enlarged?")
    with qtbot.waitSignal(dock.runner.failed, timeout=30_000):
        assert dock.send()
    qtbot.waitUntil(lambda: dock.send_button.isEnabled())
    assert dock.input.text() == "Is the liver enlarged?"
    assert dock.conversation(layer).turns == [] and dock.transcript() == ""
    assert "Model source" in dock.status.label.text()
