"""Times the official Python SDK's get_presigned_url for the same input as the
criterion bench `presign_one_url` (see docs/performance.md).

Run through benches/presign-python.sh, which installs cos-python-sdk-v5 in a venv.
"""
import timeit

from qcloud_cos import CosConfig, CosS3Client

config = CosConfig(
    Region="ap-beijing",
    SecretId="AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q",
    SecretKey="BQYIM75p8x0iWVFSIgqEKwFprpRSVHlz",
    Scheme="https",
)
client = CosS3Client(config)


def presign():
    return client.get_presigned_url(
        Bucket="examplebucket-1250000000",
        Key="images/user123/2024/image.jpg",
        Method="GET",
        Expired=3600,
    )


def presign_with_params():
    return client.get_presigned_url(
        Bucket="examplebucket-1250000000",
        Key="images/user123/2024/image.jpg",
        Method="GET",
        Expired=3600,
        Params={"response-content-type": "image/webp", "imageMogr2/thumbnail/200x": ""},
    )


for name, fn in [("cos-python-sdk-v5", presign), ("cos-python-sdk-v5 (2 params)", presign_with_params)]:
    fn()
    runs = [min(timeit.repeat(fn, number=2000, repeat=5)) / 2000 for _ in range(3)]
    best = min(runs)
    print(f"{name}: {best * 1e6:.2f} us per URL (best of 15 x 2000 calls)")
