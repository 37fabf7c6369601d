"""The exceptions the library raises at its boundary, each naming what was wrong and where."""


class PatchCoreError(Exception):
    """Base class: every error the library raises on bad input or misuse."""


class ImageLoadError(PatchCoreError):
    """An image file could not be read or decoded."""


class ImageTooLargeError(ImageLoadError):
    """An image has more pixels than the caller allows; found from its header, before decoding."""


class DatasetError(PatchCoreError):
    """A data folder is missing, empty or not in the expected layout."""


class WeightsError(PatchCoreError):
    """Backbone weights could not be found or do not match the architecture."""


class ModelFileError(PatchCoreError):
    """A saved model directory is missing, incomplete, corrupt or of another format version."""


class NotFittedError(PatchCoreError):
    """A model was used before `fit` or `load`."""


class PatchCoreWarning(UserWarning):
    """Something the library did that may not be what was meant (e.g. one working size for images of very
    different sizes); the command line prints these as `warning:` lines."""
