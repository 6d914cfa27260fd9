"""deepfake-cl: keep one deepfake detector current with continual learning."""
import os

# FFmpeg (inside OpenCV) prints its own complaints about broken videos to stderr; every such
# file already gets a row with the reason in our skip reports and detection results.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
