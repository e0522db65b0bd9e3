"""The Settings dock selects where the language model runs (in napari or in vLLM) and saves it."""

from napari_med3dvlm.inference import get_engine, load_settings
from napari_med3dvlm.widgets import SettingsWidget


def test_the_dock_selects_vllm_and_its_server(engine, qtbot):
    dock = SettingsWidget(None)
    qtbot.addWidget(dock)
    assert dock.llm.currentData() == "transformers" and not dock.vllm_url.isEnabled()
    dock.llm.setCurrentIndex(dock.llm.findData("vllm"))
    assert dock.vllm_url.isEnabled()
    dock.vllm_url.setText("127.0.0.1:8000")
    assert not dock.apply() and "vLLM server's address" in dock.status.text()
    dock.vllm_url.setText("")  # empty: we start vLLM for the model
    assert dock.apply()
    assert load_settings().llm == "vllm" and load_settings().vllm_url == ""
    assert get_engine().settings.llm == "vllm"
    dock.vllm_url.setText("http://127.0.0.1:8000/")
    assert dock.apply() and load_settings().vllm_url == "http://127.0.0.1:8000"

    fresh = SettingsWidget(None)  # the saved choice is shown next time
    qtbot.addWidget(fresh)
    assert fresh.llm.currentData() == "vllm" and fresh.vllm_url.text() == "http://127.0.0.1:8000"
