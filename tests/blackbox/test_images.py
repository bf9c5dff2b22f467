"""Images the standard way, through the real binary and boto3: the
administrator's kernel and ramdisk (`ironbark admin image import`), a
user's root image uploaded to Walrus and registered with RegisterImage,
DescribeImages, launch permissions shared with another account through
Modify/DescribeImageAttribute, and DeregisterImage."""

from conftest import creds_of, raises_code, unique
from s3util import bucket_name, s3_client


def test_register_share_and_deregister(cloud, tmp_path):
    k, r = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    k.write_bytes(b"k" * 4096)
    r.write_bytes(b"r" * 4096)
    res = cloud.admin("image", "import", "--kernel", str(k), "--ramdisk", str(r),
                      "--name", unique("base"), check=False)
    assert res.returncode == 0, res.stderr
    base = cloud.client().describe_images(ImageIds=[res.stdout.split()[-1]])["Images"][0]
    eki, eri = base["KernelId"], base["RamdiskId"]
    assert eki.startswith("eki-") and eri.startswith("eri-")

    alice_creds, bob_creds = cloud.new_account("alice"), cloud.new_account("bob")
    alice, bob = cloud.client(creds_of(alice_creds)), cloud.client(creds_of(bob_creds))
    s3 = s3_client(cloud, creds_of(alice_creds))
    b = bucket_name("img")
    s3.create_bucket(Bucket=b)
    s3.put_object(Bucket=b, Key="root.img", Body=b"\0" * 65536)
    name = unique("mine")
    ami = alice.register_image(ImageLocation=f"{b}/root.img", Name=name,
                               KernelId=eki, RamdiskId=eri)["ImageId"]
    assert ami.startswith("emi-")
    img = alice.describe_images(ImageIds=[ami])["Images"][0]
    assert (img["Name"], img["State"], img["KernelId"], img["RamdiskId"]) == (name, "available", eki, eri)
    assert img["OwnerId"] == alice_creds["account_id"]
    with raises_code("InvalidAMIName.Duplicate"):
        alice.register_image(ImageLocation=f"{b}/root.img", Name=name, KernelId=eki, RamdiskId=eri)
    with raises_code("InvalidManifest"):
        alice.register_image(ImageLocation=f"{b}/missing.img", Name=unique("x"), KernelId=eki, RamdiskId=eri)

    # Private until shared: then bob sees it, and not after the removal.
    assert ami not in [i["ImageId"] for i in bob.describe_images()["Images"]]
    with raises_code("InvalidAMIID.NotFound"):
        bob.describe_images(ImageIds=[ami])
    alice.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": bob_creds["account_id"]}]})
    perms = alice.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
    assert perms == [{"UserId": bob_creds["account_id"]}]
    assert bob.describe_images(ImageIds=[ami])["Images"][0]["ImageId"] == ami
    alice.modify_image_attribute(ImageId=ami, LaunchPermission={"Remove": [{"UserId": bob_creds["account_id"]}]})
    with raises_code("InvalidAMIID.NotFound"):
        bob.describe_images(ImageIds=[ami])

    alice.deregister_image(ImageId=ami)
    assert ami not in [i["ImageId"] for i in alice.describe_images()["Images"]]
