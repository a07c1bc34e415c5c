import sys
def test_pack_loaded():
    assert "comfyui_fal_sd3" in sys.modules
    assert "main" not in sys.modules
