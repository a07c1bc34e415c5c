"""The pack's ComfyUI nodes. Node ids are written into every saved workflow: never rename them."""

from .fal_img2img import FalSD3Img2Img
from .local_img2img import DiffusersSD3Img2Img
from .request_result import FalRequestResult
from .size_preset import FalSD3ImageSize
from .upload import FalUploadImage

NODE_CLASS_MAPPINGS = {
    "FalSD3ImageSize": FalSD3ImageSize,
    "FalUploadImage": FalUploadImage,
    "FalSD3Img2Img": FalSD3Img2Img,
    "DiffusersSD3Img2Img": DiffusersSD3Img2Img,
    "FalRequestResult": FalRequestResult,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FalSD3ImageSize": "SD3 Image Size",
    "FalUploadImage": "fal Upload Image",
    "FalSD3Img2Img": "SD3 Img2Img (fal)",
    "DiffusersSD3Img2Img": "SD3 Img2Img (local diffusers)",
    "FalRequestResult": "fal Request Result",
}
