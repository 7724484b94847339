"""The AWS boundary: the one botocore error table (:mod:`.errors`), the client's S3
(:mod:`.s3`) and Lambda Invoke (:mod:`.invoke`), and the boto3 side of the Lambda worker
(:mod:`.worker`)."""
